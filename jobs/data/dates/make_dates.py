"""Generates the quickstart dataset: sentences with a date in many spellings -> the ISO date.

Run `python jobs/data/dates/make_dates.py` to rebuild train.jsonl and validation.jsonl
(deterministic: fixed seeds; validation dates never occur in train).
"""

import datetime as dt
import json
import pathlib
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ORD = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
SPELLINGS = [
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{d.day}{ORD.get(d.day, 'th')} of {MONTHS[d.month - 1]}, {d.year}",
    lambda d: f"{d.strftime('%A')}, {MONTHS[d.month - 1]} {d.day}{ORD.get(d.day, 'th')} {d.year}",
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
]
SENTENCES = [
    "The invoice is due on {}.", "She was born on {}.", "Our office reopens {}.",
    "The contract was signed on {}.", "Please reply before {}.", "{}: kickoff meeting with the new team.",
    "The package shipped on {} from Rotterdam.", "We moved into the new house on {}.",
    "The concert on {} was sold out.", "Version 2.0 was released on {}.",
    "He ran his first marathon on {}.", "The court hearing is set for {}.",
]
PROMPT = "Write the date mentioned in this sentence as YYYY-MM-DD.\n{}"


def examples(n: int, rng: random.Random, exclude: set[dt.date]) -> tuple[list[dict], set[dt.date]]:
    rows, used = [], set()
    start = dt.date(1950, 1, 1)
    while len(rows) < n:
        d = start + dt.timedelta(days=rng.randrange(365 * 80))
        if d in exclude or d in used:
            continue
        used.add(d)
        sentence = rng.choice(SENTENCES).format(rng.choice(SPELLINGS)(d))
        rows.append({"prompt": PROMPT.format(sentence), "response": d.isoformat()})
    return rows, used


def main() -> None:
    here = pathlib.Path(__file__).parent
    validation, held_out = examples(64, random.Random(7), set())
    train, _ = examples(2000, random.Random(1234), held_out)
    write_jsonl(here, {"train": train, "validation": validation})


def write_jsonl(here: pathlib.Path, files: dict[str, list[dict]]) -> None:
    """Each list of rows into here/<name>.jsonl, one JSON object a line."""
    for name, rows in files.items():
        with open(here / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
