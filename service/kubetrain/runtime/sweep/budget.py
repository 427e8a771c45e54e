"""The failure budget as a pure decision: given the trials' statuses, should the sweep stop, and why."""

from __future__ import annotations

from collections.abc import Iterable


def stop_reason(statuses: Iterable[str], max_failed_trials: int) -> str | None:
    """Why the whole sweep stops now (more than max_failed_trials trials failed), or None to go on."""
    failed = sum(s == "failed" for s in statuses)
    if failed > max_failed_trials:
        return f"{failed} trials failed (max_failed_trials: {max_failed_trials})"
    return None
