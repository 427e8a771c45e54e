"""Baselines first: is the model worth its cost? A majority-class and a TF-IDF + logistic-regression classifier.

They are fitted on the very training split the model trains on and scored on the very validation split it is
evaluated on (the splits train/data.load_splits made, here on rank 0), with the same metric function.
"""

from __future__ import annotations

from .. import contract as ev
from .evaluate import classification_metrics

NAMES = {"majority": "majority class", "tfidf": "TF-IDF + LR"}  # for the summary, in this order


def score_baselines(
    train_texts: list[str], train_labels: list[int], val_texts: list[str], val_labels: list[int], n_classes: int,
    seed: int,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """{baseline name: eval_* metrics on the validation split}."""
    import numpy as np
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    models = {
        "majority": DummyClassifier(strategy="prior"),  # predicts the commonest class, with the class priors
        "tfidf": make_pipeline(
            # every word counts, one-letter ones too (sklearn's default pattern drops them)
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"),
            LogisticRegression(max_iter=2000, random_state=seed),
        ),
    }
    out = {}
    for name, model in models.items():
        try:
            model.fit(train_texts, train_labels)
        except ValueError:  # e.g. texts without a single word: no such baseline, never a failed run
            continue
        # a class absent from the training split gets no column: put the columns back in label order
        probs = np.zeros((len(val_texts), n_classes))
        probs[:, model.classes_] = model.predict_proba(val_texts)
        out[name] = classification_metrics(list(val_labels), probs.tolist())
    return out


def baselines_event(splits, text_field: str, label_field: str, seed: int) -> ev.Baselines | None:
    """The Baselines event for these splits (None without validation data or with one class only)."""
    names = splits.label_names or []
    if splits.validation is None or not len(splits.validation) or len(names) < 2:
        return None
    index = {name: i for i, name in enumerate(names)}
    train_labels = [index[str(v)] for v in splits.train[label_field]]
    if len(set(train_labels)) < 2:
        return None
    val_labels = [index[str(v)] for v in splits.validation[label_field] if str(v) in index]
    val_texts = [
        str(t)
        for t, v in zip(splits.validation[text_field], splits.validation[label_field])
        if str(v) in index
    ]
    train_texts = [str(t) for t in splits.train[text_field]]
    return ev.Baselines(
        metrics=score_baselines(train_texts, train_labels, val_texts, val_labels, len(names), seed)
    )
