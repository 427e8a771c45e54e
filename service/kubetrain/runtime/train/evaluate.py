"""Validation metrics, reduced over all workers: loss, perplexity, token accuracy; classification scores; exact match."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from .data import IGNORE


def _sum_all(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _gather(obj: Any) -> list:
    if dist.is_available() and dist.is_initialized():
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


@torch.no_grad()
def evaluate(
    model,
    loader,
    task: str,
    device,
    autocast,
    max_batches: int | None = None,
    predictions: dict | None = None,
) -> dict[str, float]:
    """Validation metrics over this worker's shard, combined across workers (every rank gets the same dict).

    predictions (classification): a dict that receives every rank's "labels" and "probs", gathered.
    """
    model.eval()
    loss_sum = count = correct = 0.0
    labels_all: list[int] = []
    probs_all: list[list[float]] = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = model(**batch)
        if out is None:  # a pipeline stage without the head: the last stage counts this batch
            continue
        logits = out.logits.float()
        if task == "sequence_classification":
            loss_sum += out.loss.item() * len(batch["labels"])
            count += len(batch["labels"])
            probs_all += torch.softmax(logits, -1).tolist()
            labels_all += batch["labels"].tolist()
        else:
            shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
            mask = shift_labels != IGNORE
            n = int(mask.sum())
            loss = torch.nn.functional.cross_entropy(shift_logits[mask], shift_labels[mask], reduction="sum")
            loss_sum += loss.item()
            count += n
            correct += int((shift_logits.argmax(-1)[mask] == shift_labels[mask]).sum())
    model.train()
    loss_sum, count, correct = _sum_all([loss_sum, count, correct])
    loss = loss_sum / max(count, 1)
    if task != "sequence_classification":
        return {
            "eval_loss": loss,
            "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_token_accuracy": correct / max(count, 1),
        }
    labels = [y for part in _gather(labels_all) for y in part]
    probs = [p for part in _gather(probs_all) for p in part]
    if predictions is not None:
        predictions.update(labels=labels, probs=probs)
    return {"eval_loss": loss, **classification_metrics(labels, probs)}


def classification_metrics(labels: list[int], probs: list[list[float]]) -> dict[str, float]:
    """accuracy, precision, recall, F1 (binary, or macro over classes) and ROC AUC."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    if not labels:
        return {}
    preds = [max(range(len(p)), key=p.__getitem__) for p in probs]
    n_classes = len(probs[0])
    average = "binary" if n_classes == 2 else "macro"
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, average=average, zero_division=0
    )
    out = {
        "eval_accuracy": accuracy_score(labels, preds),
        "eval_precision": float(precision),
        "eval_recall": float(recall),
        "eval_f1": float(f1),
    }
    if len(set(labels)) > 1:
        if n_classes == 2:
            out["eval_auc"] = roc_auc_score(labels, [p[1] for p in probs])
        else:
            out["eval_auc"] = roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(n_classes)))
    return out


@torch.no_grad()
def exact_match(
    model,
    tokenizer,
    formatter,
    records: list[dict],
    rank: int,
    world: int,
    device,
    max_new_tokens: int,
    batch_size: int,
) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of greedy generations equal (stripped) to the reference; each rank generates its slice.

    Returns the accuracy over all ranks and a few (prompt, reference, generated) samples from rank 0.
    """
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    mine = records[rank::world]
    hits, samples = 0, []
    try:
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            prompts = [formatter.prompt(r) for r in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for r, seq in zip(chunk, out):
                text = tokenizer.decode(seq[enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
                ref = formatter.reference(r).strip()
                hits += text == ref
                if len(samples) < 3:
                    samples.append((formatter.display(r), ref, text))
    finally:
        tokenizer.padding_side = side
        model.train()
    total_hits, total = _sum_all([hits, len(mine)])
    return total_hits / max(total, 1), samples
