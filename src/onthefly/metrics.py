"""Evaluation metrics.

Correspondence (as the seed method): mean squared error against the true
matrix; the truth binarised at 0.5; precision and recall of the predictions
thresholded at 0.5; average precision of the predicted scores (area under the
precision-recall curve, as the mean precision at the rank of each positive).

Classification: accuracy, precision, recall and Cohen's kappa of binary labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_precision", "correspondence_metrics", "classification_metrics"]


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision of ``scores`` ranking the positives of boolean ``labels`` (same shape).

    Ties are broken by order of appearance. Returns NaN when there are no positives.
    """
    scores, labels = scores.detach().reshape(-1).double(), labels.detach().reshape(-1).bool()
    if scores.shape != labels.shape:
        raise ValueError(f"scores, labels: expected the same number of entries, got {scores.numel()} and {labels.numel()}")
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    hits = labels[order].double()
    precision_at_rank = hits.cumsum(0) / torch.arange(1, hits.numel() + 1, dtype=torch.float64, device=hits.device)
    return float((precision_at_rank * hits).sum() / positives)


def correspondence_metrics(predicted: Tensor, target: Tensor, *, threshold: float = 0.5) -> dict[str, float]:
    """``mse``, ``precision``, ``recall``, ``ap`` (and ``positives``, the fraction of true matches).

    Args:
        predicted, target: ``(B, V*N, V*N)`` (any equal shapes), values in ``[0, 1]``.
        threshold: binarisation threshold for the truth and the predictions.

    Precision is NaN when nothing is predicted positive, recall and AP when nothing is truly positive.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"predicted: expected the target's shape {tuple(target.shape)}, got {tuple(predicted.shape)}")
    predicted, target = predicted.detach().float(), target.detach().float()
    truth = target > threshold
    guess = predicted > threshold
    true_positives = float((truth & guess).sum())
    predicted_positives, actual_positives = float(guess.sum()), float(truth.sum())
    return {
        "mse": float(((predicted - target) ** 2).mean()),
        "precision": true_positives / predicted_positives if predicted_positives else float("nan"),
        "recall": true_positives / actual_positives if actual_positives else float("nan"),
        "ap": average_precision(predicted, truth),
        "positives": actual_positives / truth.numel(),
    }


def classification_metrics(predicted: Tensor, target: Tensor) -> dict[str, float]:
    """``accuracy``, ``precision``, ``recall`` and Cohen's ``kappa`` of binary labels (0/1 or bool, same shape)."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted: expected the target's shape {tuple(target.shape)}, got {tuple(predicted.shape)}")
    p, t = predicted.detach().reshape(-1).bool(), target.detach().reshape(-1).bool()
    n = p.numel()
    if n == 0:
        raise ValueError("predicted: expected at least one label, got none")
    tp, tn = float((p & t).sum()), float((~p & ~t).sum())
    fp, fn = float((p & ~t).sum()), float((~p & t).sum())
    accuracy = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
    return {
        "accuracy": accuracy,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "kappa": (accuracy - chance) / (1 - chance) if chance < 1 else float("nan"),
    }
