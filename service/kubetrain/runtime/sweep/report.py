"""What a person sees of a sweep: a live trial table, the closing summary, and the PNG plots logged to MLflow."""

from __future__ import annotations

import math
import os
import sys

from rich.console import Console
from rich.live import Live
from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup
from rich.table import Table

from . import learning_curve

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "stopped_early": "yellow",
    "failed": "red",
}


class SweepConsole:
    """A live table of trials on a terminal; one line per trial outcome otherwise (CI logs, pipes)."""

    def __init__(self, enabled: bool, name: str, metrics: list[str], params: list[str]):
        self.enabled, self.name, self.metrics, self.params = enabled, name, metrics, params
        self.console = Console(highlight=False)
        self.live: Live | None = None
        self._printed: dict[str, str] = {}

    def say(self, text: str) -> None:
        if self.enabled:
            (self.live.console if self.live else self.console).print(text)

    def start(self) -> None:
        if self.enabled and self.console.is_terminal and self.live is None:
            self.live = Live(self.table({}), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def table(self, rows: dict) -> Table:
        t = Table(title=f"sweep {self.name}")
        for col in ["trial", "status", *self.params, *self.metrics, "eval #", "step"]:
            t.add_column(col, justify="right" if col not in ("trial", "status") else "left")
        for row in rows.values():
            t.add_row(
                row.trial_id,
                f"[{STATUS_STYLE.get(row.status, '')}]{row.status}[/]",
                *[_fmt(row.params.get(_canon(p, row.params))) for p in self.params],
                *[_fmt(row.metrics.get(m)) for m in self.metrics],
                str(row.iteration),
                str(row.step),
            )
        return t

    def update(self, rows: dict) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self.table(rows))
            return
        for row in rows.values():  # plain output: a line whenever a trial changes status
            if self._printed.get(row.trial_id) != row.status:
                self._printed[row.trial_id] = row.status
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
                metric = " ".join(f"{m} {_fmt(row.metrics.get(m))}" for m in self.metrics)
                print(f"trial {row.trial_id} {row.status}: {shown}  {metric}  step {row.step}", flush=True)

    def summary(self, result, sweep) -> None:
        if not self.enabled:
            return
        self.stop()
        c = self.console
        rows = {r.trial_id: r for r in result.trials}
        c.print(self.table(rows))
        counts = {
            s: sum(r.status == s for r in result.trials) for s in ("completed", "stopped_early", "failed")
        }
        c.print(
            f"{len(result.trials)} trials: {counts['completed']} completed, {counts['stopped_early']} stopped "
            f"early, {counts['failed']} failed" + (" (resumed)" if result.resumed else "")
        )
        for row in result.trials:
            if row.status == "failed" and row.error:
                c.print(f"  trial {row.trial_id} failed: {row.error}", markup=False)
        if result.best:
            b = result.best
            c.print(
                f"\nBest trial {b.trial_id}: {sweep.metric} {_fmt(b.metrics.get(sweep.metric))} "
                f"({', '.join(f'{k}={_fmt(v)}' for k, v in b.params.items())})"
            )
            c.print(f"Ready-to-run job: {result.best_job_path}")
            c.print(f"Checkpoint:       {result.best_checkpoint}")
        if result.pareto:
            c.print(
                "Pareto front: "
                + "; ".join(
                    f"{r.trial_id} "
                    + " ".join(f"{o.metric} {_fmt(r.metrics.get(o.metric))}" for o in sweep.objectives())
                    for r in result.pareto
                )
            )
        status = (
            "[green]succeeded[/green]"
            if result.succeeded
            else f"[red]failed[/red]: {escape(result.error or '')}"
        )
        c.print(f"\nSweep {status} in {result.seconds:.0f} s")
        c.print(f"MLflow:           {result.mlflow_hint}")
        sys.stdout.flush()


def log_plots(trials: list, metrics: list[str], sweep, out_dir: str) -> list[str]:
    """metric per trial over training steps, each parameter against the metric, and the learning curve when
    data.train_fraction varies (PNG and JSON); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metric = metrics[0]
    curves = [(r, [(h["step"], h[metric]) for h in r.history if metric in h]) for r in trials]
    curves = [(r, pts) for r, pts in curves if pts]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for row, pts in curves:
            style = {"completed": "-", "stopped_early": "--", "failed": ":"}.get(row.status, "-")
            ax.plot(*zip(*pts), style, marker="o", markersize=3, label=f"{row.trial_id} ({row.status})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "metric_per_trial.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    scored = [r for r in trials if metric in r.metrics]
    params = list(sweep.parameters)
    if scored and params:
        fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), dpi=100, squeeze=False)
        for ax, raw in zip(axes[0], params):
            key = _canon(raw, scored[0].params)
            xs = [r.params.get(key) for r in scored]
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
            if not numeric:
                labels = sorted({str(x) for x in xs})
                xs = [labels.index(str(x)) for x in xs]
                ax.set_xticks(range(len(labels)), labels)
            ax.scatter(xs, [r.metrics[metric] for r in scored])
            if sweep.parameters[raw].type == "loguniform" or getattr(sweep.parameters[raw], "log", False):
                ax.set_xscale("log")
            ax.set_xlabel(raw)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, "parameter_vs_metric.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths + learning_curve.write(trials, metric, sweep, out_dir)


def _canon(raw: str, params: dict) -> str:
    """Trial params are keyed by canonical path (peft.lora.r -> peft.r)."""
    if raw in params:
        return raw
    alias = "peft." + raw.removeprefix("peft.lora.")
    return alias if alias in params else raw


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
