"""What a person sees: a live progress bar (step, loss, lr, samples/s, ETA) and the end-of-run summary."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .classification_report import BASELINE_NAMES, summary_lines

LABELS = {
    "eval_loss": "validation loss",
    "eval_perplexity": "perplexity",
    "eval_token_accuracy": "token accuracy",
    "eval_exact_match": "exact-match accuracy",
    "eval_accuracy": "accuracy",
    "eval_precision": "precision",
    "eval_recall": "recall",
    "eval_f1": "F1",
    "eval_auc": "ROC AUC",
    "eval_ece": "calibration error (ECE)",
    "eval_reward_accuracy": "reward accuracy (DPO)",
    "eval_reward_margin": "reward margin (DPO)",
    "eval_logps_chosen": "log-prob of chosen",
    "eval_logps_rejected": "log-prob of rejected",
}


class RunConsole:
    """Progress bar on a terminal; plain periodic lines otherwise (CI logs, pipes)."""

    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=False, highlight=False)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.total = 0
        self._last_line = 0.0

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, soft_wrap=True)
        else:
            self.console.print(text, soft_wrap=True)  # messages carry paths: never broken across lines

    def start(self, total: int, step: int) -> None:
        self.total = total
        if not self.enabled:
            return
        if self.live and self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[sps]} samples/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=total, completed=step, loss="-", lr="-", sps="-"
            )

    def step(self, step: int, metrics: dict, eta_s: float | None) -> None:
        if not self.enabled:
            return
        loss = f"{metrics.get('train_loss', float('nan')):.4f}"
        lr = f"{metrics.get('learning_rate', float('nan')):.2e}"
        sps = f"{metrics.get('samples_per_second', float('nan')):.1f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, lr=lr, sps=sps)
        elif time.time() - self._last_line > 5 or step == self.total:
            self._last_line = time.time()
            eta = f"{eta_s:.0f}s" if eta_s is not None else "?"
            print(f"step {step}/{self.total}  loss {loss}  lr {lr}  {sps} samples/s  ETA {eta}", flush=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def summary(self, result) -> None:
        if not self.enabled:
            return
        self.stop()
        c = self.console
        c.print()
        keys = [k for k in LABELS if k in result.before or k in result.after]
        if keys:
            # the title is its own line: a table title wraps at the table's width (~40 columns)
            c.print(f"[italic]{result.job_name}: held-out validation ({result.validation_examples} examples)[/]",
                    soft_wrap=True)  # fmt: skip
            table = Table()
            table.add_column("metric")
            table.add_column("before", justify="right")
            table.add_column("after", justify="right")
            baselines = getattr(
                result, "baselines", {}
            )  # classification: beside the model, on the same validation split
            for name in baselines:
                table.add_column(BASELINE_NAMES.get(name, name), justify="right")
            for k in keys:
                table.add_row(LABELS[k], _fmt(result.before.get(k), k), _fmt(result.after.get(k), k),
                              *[_fmt(b.get(k), k) for b in baselines.values()])  # fmt: skip
            c.print(table)
        for line in summary_lines(result):
            c.print(line, soft_wrap=True, markup=False, highlight=False)
        for name, evidence in getattr(result, "warnings", {}).items():  # training health (run/diagnosis.py)
            c.print(f"Warning ({name}): {evidence}", soft_wrap=True, markup=False, highlight=False)
        for prompt, ref, got in result.samples_after[:3]:
            c.print(
                f"  {prompt.strip().splitlines()[-1][:90]}\n    expected {ref!r}  generated {got!r}",
                markup=False,
            )
        status = (
            "[green]succeeded[/green]"
            if result.succeeded
            else f"[red]failed[/red]: {escape(result.error or '')}"
        )
        c.print(
            f"\nRun {status} after {result.steps} steps in {result.seconds:.0f} s"
            + (" (stopped early)" if result.stopped_early else "")
        )
        # paths, commands and URLs are never wrapped (soft_wrap: the terminal folds them, a pipe keeps one line)
        if result.final_dir:
            c.print(f"Model/adapter: {result.final_dir}", soft_wrap=True, markup=False, highlight=False)
        c.print(f"Checkpoints:   {result.run_dir}", soft_wrap=True, markup=False, highlight=False)
        if result.tracking_note:
            c.print(f"[yellow]{result.tracking_note}[/yellow]", soft_wrap=True)
        c.print(f"MLflow:        {result.mlflow_hint}", soft_wrap=True, markup=False, highlight=False)
        sys.stdout.flush()


def _fmt(value, key: str) -> str:
    if value is None:
        return "-"
    if key in ("eval_exact_match", "eval_accuracy", "eval_token_accuracy", "eval_reward_accuracy"):
        return f"{100 * value:.1f}%"
    return f"{value:.4f}"
