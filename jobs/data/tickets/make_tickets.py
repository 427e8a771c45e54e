"""Generates the classification example's data: customer messages -> does the customer want to leave?

Run `python jobs/data/tickets/make_tickets.py` to rebuild train.jsonl and validation.jsonl (deterministic:
fixed seed). Each record is {"text": ..., "label": "leave" | "keep"}.

What makes it a fair test rather than a keyword lookup:
- imbalanced: about 1 message in 5 is "leave" (the positive class, sorted second so it is class 1);
- the words overlap: "keep" messages mention cancelling, refunds and competitors in negated, past or
  hypothetical turns ("I almost cancelled, but support fixed it"), and "leave" messages often say it
  without those words ("stop charging my card after this month");
- 5% of labels are flipped (annotators disagree), so no model reaches 100%;
- half of the validation messages use phrasings that never occur in training (HELD_OUT): a classifier
  must understand them, not recognise them. The rest are new combinations of the training phrasings.
"""

import json
import pathlib
import random

PRODUCTS = [
    "the app",
    "my subscription",
    "the premium plan",
    "the family plan",
    "the service",
    "my membership",
    "the cloud storage plan",
    "the streaming package",
    "the pro account",
]
REASONS = [
    "the price went up again",
    "the app keeps crashing",
    "I found a cheaper option",
    "support never answers",
    "I barely use it",
    "the new update is confusing",
    "billing charged me twice",
    "the sync is slow",
    "I am moving abroad",
    "the ads are annoying",
]
OPENERS = ["Hi,", "Hello team,", "Hey.", "Good morning.", "", "", "To whom it may concern:", "Quick note:"]
CLOSERS = ["Thanks.", "Regards.", "", "", "Cheers", "Please confirm.", "Let me know.", "Sent from my phone"]

LEAVE = [  # the customer wants to leave (explicitly or not)
    "Please cancel {p} today, {r}.",
    "I want to cancel {p}. {R}.",
    "{R}, so I am done with {p}.",
    "Stop charging my card after this month. {R}.",
    "How do I close my account? {R}.",
    "Do not renew {p} next cycle.",
    "I would like a refund and to end {p}, {r}.",
    "{R}. I am switching to a competitor at the end of the month.",
    "Remove my payment details and delete my account please.",
    "Not renewing. {R}.",
    "This is my notice that I will not continue with {p}.",
    "{R}. I have had enough, terminate {p}.",
    "I no longer need {p}, please end it before the next bill.",
    "Unsubscribe me from {p}, {r}.",
]
KEEP = [  # the customer stays, though the words may suggest otherwise
    "I almost cancelled {p} because {r}, but support fixed it. Thanks!",
    "{R}. Can you help me fix it? I like {p} otherwise.",
    "My friend cancelled {p} but I am staying, the new features are great.",
    "Is there a discount on {p}? {R} but I do not want to leave.",
    "I do not want to cancel, I only want to change the card on {p}.",
    "Please upgrade {p} to the yearly option.",
    "I was charged twice, please refund the extra charge. I am keeping {p}.",
    "How do I add a second user to {p}?",
    "{R}, any tips? Otherwise happy with {p}.",
    "I thought about switching, but {p} is still the best for me.",
    "Can I pause {p} for a month while I travel? I will be back.",
    "Love {p}. One request: a dark mode.",
    "Where can I download my invoice for {p}?",
    "Renew {p} for another year, please.",
    "I cancelled by mistake, can you restore {p}?",
    "{R}. Not cancelling, just letting you know.",
]

HELD_OUT = {  # validation only
    True: [
        "Time to say goodbye to {p}. {R}.",
        "I am not paying for {p} anymore, {r}.",
        "Please make sure I am not billed again, I am out.",
        "{R}. End my contract, I found something else.",
        "Could you shut down my account? {R}.",
        "I have decided to quit {p}.",
    ],
    False: [
        "{R}, but I am sticking with {p}.",
        "Goodbye to the old plan, hello yearly {p}! Please switch me.",
        "I am not leaving, I just need help with {p}: {r}.",
        "Someone told me to quit {p}; no way, it works great.",
        "Thanks for the refund, I will keep using {p}.",
        "Could you move {p} to my new email address?",
    ],
}


def message(rng: random.Random, leave: bool, held_out: bool = False) -> str:
    template = rng.choice(HELD_OUT[leave] if held_out else LEAVE if leave else KEEP)
    reason = rng.choice(REASONS)
    body = template.format(p=rng.choice(PRODUCTS), r=reason, R=reason[0].upper() + reason[1:])
    return " ".join(x for x in (rng.choice(OPENERS), body, rng.choice(CLOSERS)) if x)


def records(seed: int, n: int, held_out: float, leave_share: float = 0.2, noise: float = 0.05) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        leave = rng.random() < leave_share
        text = message(rng, leave, held_out=rng.random() < held_out)
        label = leave if rng.random() >= noise else not leave  # annotator disagreement
        out.append({"text": text, "label": "leave" if label else "keep"})
    return out


def main() -> None:
    here = pathlib.Path(__file__).parent
    for name, seed, n, held_out in (("train", 1, 1200, 0.0), ("validation", 2, 400, 0.5)):
        rows = records(seed, n, held_out)
        (here / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        share = sum(r["label"] == "leave" for r in rows) / n
        print(f"{name}: {n} records, {share:.1%} leave")


if __name__ == "__main__":
    main()
