"""Generates the DPO example's preference pairs from the quickstart's dates task (make_dates.py).

The prompts add numeric, day-first spellings ("05.03.1987", "5/3/1987") to the quickstart's: the SFT model
never saw them and is tempted by the mistakes a person makes with such dates. `chosen` is the ISO date;
`rejected` is one plausible mistake: day and month swapped (when both could be a month), the wrong
century, or the US format MM/DD/YYYY. Run `python jobs/data/dates/make_preferences.py` to rebuild
preferences_train.jsonl and preferences_validation.jsonl (deterministic; validation dates never occur in
train, nor in the quickstart's training set).
"""

import datetime as dt
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from make_dates import PROMPT, SENTENCES, SPELLINGS, examples, write_jsonl  # noqa: E402

DAY_FIRST = [
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.day}/{d.month}/{d.year}",
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
]
NOTE = " Dates here are written day first."


def mistake(d: dt.date, rng: random.Random) -> str:
    """A wrong answer someone plausibly writes for d."""
    options = ["century", "us"]
    if d.day <= 12 and d.day != d.month:
        options += ["swap", "swap"]  # the classic day-first mistake, where it is possible
    kind = rng.choice(options)
    if kind == "swap":
        return f"{d.year}-{d.day:02d}-{d.month:02d}"
    if kind == "century":
        year = d.year + 100 if d.year < 2000 else d.year - 100
        return f"{year}-{d.month:02d}-{d.day:02d}"
    return f"{d.month:02d}/{d.day:02d}/{d.year}"


def pairs(n: int, rng: random.Random, exclude: set[dt.date]) -> tuple[list[dict], set[dt.date]]:
    rows, used = [], set()
    start = dt.date(1950, 1, 1)
    while len(rows) < n:
        d = start + dt.timedelta(days=rng.randrange(365 * 80))
        if d in exclude or d in used:
            continue
        used.add(d)
        day_first = rng.random() < 0.75
        spelling = rng.choice(DAY_FIRST if day_first else SPELLINGS)(d)
        sentence = rng.choice(SENTENCES).format(spelling) + (NOTE if day_first else "")
        rows.append({"prompt": PROMPT.format(sentence), "chosen": d.isoformat(), "rejected": mistake(d, rng)})
    return rows, used


def main() -> None:
    here = pathlib.Path(__file__).parent
    _, sft_train = examples(2000, random.Random(1234), examples(64, random.Random(7), set())[1])
    validation, held_out = pairs(64, random.Random(11), sft_train)
    train, _ = pairs(1000, random.Random(5678), held_out)
    write_jsonl(here, {"preferences_train": train, "preferences_validation": validation})


if __name__ == "__main__":
    main()
