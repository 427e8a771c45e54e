"""Seeded subsets of a data set: the held-out validation split and train_fraction, stratified for labels.

Classification keeps its class proportions in both (scikit-learn's stratified train_test_split), so a rare
class is neither missing from validation nor over-represented in a small training fraction. Where
stratifying is impossible (a class with a single record, fewer records than classes) the subset is drawn
uniformly instead, with a warning.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def hold_out(ds, size: float, seed: int, label_column: str | None = None):
    """(rest, held out): `size` of ds held out, stratified by label_column when given."""
    if label_column is None:  # the split every other format has always had
        parts = ds.train_test_split(test_size=size, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    keep, held = _split(ds, label_column, seed, test_size=size)
    return ds.select(keep), ds.select(held)


def take_fraction(ds, fraction: float, seed: int, label_column: str | None = None):
    """A seeded `fraction` of ds (at least one record), stratified by label_column when given."""
    if fraction >= 1.0:
        return ds
    n = max(1, round(fraction * len(ds)))
    if n >= len(ds):
        return ds
    if label_column is None:
        return ds.shuffle(seed=seed).select(range(n)).flatten_indices()
    keep, _ = _split(ds, label_column, seed, train_size=n)
    return ds.select(keep)


def _split(ds, label_column: str, seed: int, **size) -> tuple[list[int], list[int]]:
    """Row indices (kept, other), each in a seeded shuffled order (as datasets' own split gives: the first
    records of a part, which max_validation_samples and eval_batches take, are no run of the file's first
    class); stratified by label unless that is impossible."""
    from sklearn.model_selection import train_test_split

    labels = [str(v) for v in ds[label_column]]
    rows = list(range(len(ds)))
    try:
        kept, other = train_test_split(rows, stratify=labels, random_state=seed, shuffle=True, **size)
    except ValueError as e:  # too few records of a class to spread over both parts
        log.warning("cannot stratify by '%s' (%s); drawing the subset uniformly", label_column, e)
        kept, other = train_test_split(rows, random_state=seed, shuffle=True, **size)
    return list(kept), list(other)
