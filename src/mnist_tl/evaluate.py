"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix, and the
statistics used to compare models over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Predicted class of every row of ``x`` (float inputs as the model expects)."""
    model.eval()
    return torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)])


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor,
                           labels: Sequence[int]) -> dict:
    """Accuracy (%), per-class precision/recall/F1/support and the confusion matrix.

    ``labels`` are the task's classes; a prediction outside them (possible with
    a 10-way head on a 5-digit task) counts as an error and shows in the
    confusion matrix's extra column "other".
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    other = ~np.isin(y_pred, labels)
    matrix = confusion_matrix(y_true, np.where(other, -1, y_pred), labels=labels + [-1])
    return {
        "accuracy": float((y_true == y_pred).mean() * 100),
        "correct": int((y_true == y_pred).sum()),
        "n": int(len(y_true)),
        "labels": labels,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": matrix[:len(labels)].tolist(),  # rows true, columns predicted + other
    }


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and Student-t confidence interval over seeds."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "std": float("nan"), "ci95_low": float("nan"),
                "ci95_high": float("nan"), "n_seeds": n}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n))
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "n_seeds": n}


def mcnemar(correct_a: torch.Tensor | np.ndarray, correct_b: torch.Tensor | np.ndarray) -> dict:
    """Exact McNemar test of two classifiers on the same test images.

    ``b``: images A gets right and B wrong; ``c``: the reverse. The two-sided
    p-value is that of ``b`` under Binomial(b + c, 1/2).
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("McNemar needs predictions on the same images")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def deck_mixed_accuracy(correct_source_before: int, correct_target_after: int,
                        total: int = 10_000) -> float:
    """The slide deck's transfer number, which its test routine computed by accident.

    Its counters were never reset between the source evaluation (before transfer)
    and the target evaluation (after), and the sum was divided by all 10 000 test
    images: (correct on source test + correct on target test) / 10 000, in %.
    """
    return 100 * (correct_source_before + correct_target_after) / total
