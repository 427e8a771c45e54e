"""Training health: a non-finite loss or gradient stops the run; a loss spike or overfitting is a warning.

The stop is decided on every rank before the optimizer update (nonfinite + agree), so no rank applies a bad
gradient and no checkpoint is written from a bad state. The warning detectors are small pure classes fed with
logged values (the driver runs them on the events it receives: run/diagnosis.py).
"""

from __future__ import annotations

import math
import os
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

# What stopped a run, in the order they are checked (the loss first: a NaN loss makes NaN gradients too).
NAN_LOSS, INF_LOSS, NAN_GRAD, INF_GRAD = "nan_loss", "inf_loss", "nan_grad_norm", "inf_grad_norm"
_KINDS = (NAN_LOSS, INF_LOSS, NAN_GRAD, INF_GRAD)


def nonfinite(loss: float, grad_norm: float | None) -> str | None:
    """Which of the step's values is NaN or infinite (a kind above), else None."""
    for value, nan, inf in ((loss, NAN_LOSS, INF_LOSS), (grad_norm, NAN_GRAD, INF_GRAD)):
        if value is not None and not math.isfinite(value):
            return nan if math.isnan(value) else inf
    return None


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float | None:
    """The L2 norm of the gradients this rank holds (None when it holds none: ZeRO keeps them elsewhere)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return float(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False))


def agree(kind: str | None) -> str | None:
    """The same decision on every rank: the first kind (in _KINDS order) any rank found, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return kind
    code = torch.tensor([_KINDS.index(kind) + 1 if kind else 0], dtype=torch.int64)
    flags = torch.zeros(len(_KINDS) + 1, dtype=torch.int64)
    flags[code] = 1
    dist.all_reduce(flags)  # a count per kind over ranks: one small all-reduce per optimizer step
    found = [k for k, n in zip(_KINDS, flags[1:].tolist()) if n]
    return found[0] if found else None


def injected_nan(step: int, rank: int, world: int) -> bool:
    """Test hook: the last rank's loss and gradients become NaN at optimizer step KUBETRAIN_NAN_AT_STEP (the
    other ranks stay finite, so the stop must be agreed over ranks)."""
    at = int(os.environ.get("KUBETRAIN_NAN_AT_STEP", "0"))
    return bool(at) and step == at and rank == world - 1


@dataclass(frozen=True)
class Spike:
    """A logged training loss far above its recent range: the evidence of a diverging loss."""

    step: int
    loss: float
    median: float
    mad: float
    first_step: int  # the steps the median and MAD are over
    last_step: int

    def text(self) -> str:
        return (
            f"loss {self.loss:.4g} at step {self.step}, vs median {self.median:.4g} (MAD {self.mad:.3g}) "
            f"of steps {self.first_step}-{self.last_step}"
        )


class DivergenceDetector:
    """A spike: a loss over `factor` robust deviations (1.4826 x MAD, at least 5% of the median) above the
    median of the last `window` logged losses, and at least twice that median (noise on a flat curve is not
    divergence). A NaN is not a spike: the run stops for it."""

    def __init__(self, factor: float = 10.0, window: int = 20, min_points: int = 8):
        self.factor, self.min_points = factor, min_points
        self.recent: deque[tuple[int, float]] = deque(maxlen=window)
        self.spikes: list[Spike] = []

    def add(self, step: int, loss: float) -> Spike | None:
        """The spike this loss is, if it is one; it joins the window either way (a lasting rise becomes the
        new normal after `window` steps, and was flagged by then)."""
        if not math.isfinite(loss):
            return None
        spike = None
        if len(self.recent) >= self.min_points:
            values = [v for _, v in self.recent]
            median = statistics.median(values)
            mad = statistics.median(abs(v - median) for v in values)
            spread = max(1.4826 * mad, 0.05 * abs(median), 1e-12)
            if loss > median + self.factor * spread and loss > 2 * median:
                spike = Spike(step, loss, median, mad, self.recent[0][0], self.recent[-1][0])
                self.spikes.append(spike)
        self.recent.append((step, loss))
        return spike


@dataclass(frozen=True)
class Overfitting:
    """Validation loss rising for `patience` evaluations in a row while the training loss fell."""

    steps: list[int]
    eval_loss: list[float]
    train_loss: list[float]  # the mean logged training loss over each evaluation's interval

    def text(self) -> str:
        def series(xs: list[float]) -> str:
            return " -> ".join(f"{x:.4g}" for x in xs)

        return (
            f"validation loss rose {series(self.eval_loss)} at steps {', '.join(map(str, self.steps))} "
            f"while training loss fell {series(self.train_loss)}"
        )


class OverfittingDetector:
    """Fed each logged training loss and each validation loss; flags `patience` rises in a row of the
    validation loss while the mean training loss over the same evaluations fell."""

    def __init__(self, patience: int = 3):
        self.patience = patience
        self._train: list[float] = []  # logged training losses since the last evaluation
        self.evals: list[tuple[int, float, float]] = []  # (step, eval_loss, mean train loss before it)
        self.found: Overfitting | None = None

    def add_train(self, loss: float) -> None:
        if math.isfinite(loss):
            self._train.append(loss)

    def add_eval(self, step: int, eval_loss: float) -> Overfitting | None:
        """The evidence when this evaluation completes the pattern for the first time."""
        train = statistics.fmean(self._train) if self._train else math.nan
        self._train = []
        self.evals.append((step, eval_loss, train))
        last = self.evals[-(self.patience + 1) :]
        if self.found or len(last) <= self.patience:
            return None
        rising = all(b[1] > a[1] for a, b in zip(last, last[1:]))
        falling = last[-1][2] < last[0][2]  # NaN (no training loss logged) compares False: no warning
        if rising and falling:
            steps, evals, trains = (list(x) for x in zip(*last))
            self.found = Overfitting(steps, evals, trains)
            return self.found
        return None
