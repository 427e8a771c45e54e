"""Finished trials written down the moment Tune reports them, so a resumed sweep never trains them again."""

from __future__ import annotations

import json
import os

FILE = "finished_trials.jsonl"


class Journal:
    """An append-only file of finished trial rows (JSON lines), flushed to disk before the driver goes on.

    Tune saves its experiment state only every period (at least 10 s), and sweep.json follows it; a driver
    that dies in between would leave a finished trial looking unfinished. This file is ahead of both.
    """

    def __init__(self, sweep_dir: str):
        self.path = os.path.join(sweep_dir, FILE)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        """A new sweep (not a resumed one) of the same name starts with no finished trials."""
        if os.path.exists(self.path):
            os.remove(self.path)

    def read(self) -> list[dict]:
        """Every recorded row, the last record of a trial winning; a torn last line (a crash mid-write) is skipped."""
        if not os.path.exists(self.path):
            return []
        rows: dict[str, dict] = {}
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                rows[row["trial_id"]] = row
        return list(rows.values())
