"""Tune's hooks into the sweep: trial events forwarded to the driver's SweepMonitor, and its stop decision.

Tune pickles its callbacks and stopper with the experiment, so they carry only a key into MONITORS, the
monitors of this process.
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.stopper import Stopper

from .monitor import SweepMonitor

MONITORS: dict[str, SweepMonitor] = {}


class Forward(Callback):
    """Tune callback forwarding trial events to MONITORS[key]."""

    def __init__(self, key: str):
        self.key = key

    def on_step_begin(self, iteration, trials, **info):  # Tune has no pause event: look for paused trials
        if m := MONITORS.get(self.key):
            for trial in trials:
                if trial.status == "PAUSED":
                    m.on_pause(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if m := MONITORS.get(self.key):
            m.on_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_error(trial)

    def on_step_end(self, iteration, trials, **info):  # Tune saved its experiment state just before
        if m := MONITORS.get(self.key):
            m.flush()


class FailureBudget(Stopper):
    """Ends the whole sweep once the monitor's failure budget says so (budget.stop_reason)."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):  # Tune asks this on every step of its loop: a good place to reap placement groups
        m = MONITORS.get(self.key)
        if m:
            m.reap()
        return bool(m and m.stop_reason)
