"""Metrics: average precision, correspondence and classification scores on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly.metrics import average_precision, classification_metrics, correspondence_metrics


def test_average_precision_hand_computed():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    assert average_precision(scores, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.25)
    assert math.isnan(average_precision(scores, torch.zeros(4)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=40))
def test_average_precision_matches_the_definition(pairs):
    scores = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    labels = torch.tensor([p[1] for p in pairs])
    ap = average_precision(scores, labels)
    if not labels.any():
        assert math.isnan(ap)
        return
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])  # stable: ties keep their order
    hits, total = 0, 0.0
    for rank, index in enumerate(order, 1):
        if pairs[index][1]:
            hits += 1
            total += hits / rank
    assert ap == pytest.approx(total / int(labels.sum()))
    assert 0 < ap <= 1


def test_correspondence_metrics():
    target = torch.tensor([[[1.0, 0.8, 0.0], [0.8, 1.0, 0.2], [0.0, 0.2, 0.6]]])
    perfect = correspondence_metrics(target, target)
    assert perfect["mse"] == 0 and perfect["precision"] == 1 and perfect["recall"] == 1 and perfect["ap"] == 1
    guess = torch.tensor([[[0.9, 0.4, 0.6], [0.4, 0.9, 0.1], [0.6, 0.1, 0.7]]])
    metrics = correspondence_metrics(guess, target)
    # Truth > 0.5: 5 entries (the diagonal and the two 0.8). Guess > 0.5: diagonal and the two 0.6 (both wrong).
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 5)
    assert metrics["mse"] == pytest.approx(float(((guess - target) ** 2).mean()))
    assert metrics["positives"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="predicted"):
        correspondence_metrics(guess[:, :2], target)


def test_classification_metrics_and_kappa():
    truth = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])
    guess = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0, 1, 0])
    m = classification_metrics(guess, truth)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    # Cohen's kappa: p_o = 0.8, p_e = 0.4 * 0.4 + 0.6 * 0.6 = 0.52.
    assert m["kappa"] == pytest.approx((0.8 - 0.52) / (1 - 0.52))
    assert classification_metrics(truth, truth)["kappa"] == pytest.approx(1.0)
