"""The correspondence model's task: MSE against the true matrix; MSE, precision, recall and AP on held-out data."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import correspondence_metrics
from ..models import CorrespondenceConfig, CorrespondenceModel
from ..preview import save_prediction_preview
from ..sampling import DRRCorrespondenceSampler, require_fields
from .config import TrainConfig
from .loop import _train

__all__ = ["train_correspondence", "evaluate_correspondence"]


@torch.no_grad()
def evaluate_correspondence(model: torch.nn.Module, sampler: DRRCorrespondenceSampler, *, batches: int = 4,
                            device: torch.device | str = "cpu") -> tuple[dict[str, float], object, Tensor]:
    """Metrics of ``model`` on batches ``0 .. batches-1`` of ``sampler`` (a fixed, seeded stream).

    Returns the metrics (over all entries of all batches), the first batch and its prediction.
    """
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    first = first_prediction = None
    for step in range(batches):
        batch = sampler.sample(step).to(device)
        predicted = model(batch.images).float()
        predictions.append(predicted.cpu())
        targets.append(batch.correspondence.cpu())
        if first is None:
            first, first_prediction = batch, predicted
    model.train(was_training)
    return correspondence_metrics(torch.cat(predictions), torch.cat(targets)), first, first_prediction


# ---------------------------------------------------------------------------
# Training


class _CorrespondenceTask:
    """The correspondence model: MSE against the true matrix; MSE/precision/recall/AP on held-out data."""

    name = "correspondence"
    eval_keys = ("mse", "precision", "recall", "ap")
    score = "ap"

    def __init__(self, model_config: CorrespondenceConfig) -> None:
        if not isinstance(model_config, CorrespondenceConfig):
            raise TypeError(f"model_config: expected a CorrespondenceConfig, got {type(model_config).__name__}")
        self.model_config = model_config

    def build(self) -> torch.nn.Module:
        return CorrespondenceModel(self.model_config)

    def loss(self, model: torch.nn.Module, batch) -> Tensor:
        return F.mse_loss(model(batch.images).float(), batch.correspondence)

    def evaluate(self, model, sampler, batches: int, device, picture: Path) -> dict[str, float]:
        metrics, batch, predicted = evaluate_correspondence(model, sampler, batches=batches, device=device)
        save_prediction_preview(batch.images[0], predicted[0], batch.correspondence[0], picture,
                                patch_size=batch.patch_size, title=f"held-out sample: AP {metrics['ap']:.3f}")
        return metrics


def train_correspondence(
    model_config: CorrespondenceConfig,
    sampler: DRRCorrespondenceSampler,
    config: TrainConfig,
    *,
    eval_sampler: DRRCorrespondenceSampler | None = None,
) -> dict:
    """Train the correspondence model on ``sampler``'s stream; evaluate on ``eval_sampler``.

    Args:
        model_config: the architecture.
        sampler: the training stream (its ``batch_size`` is the per-rank batch).
        config: the run's settings.
        eval_sampler: a stream of held-out volumes (and, if wished, poses); its
            first ``eval_batches`` batches are the evaluation set.

    Returns:
        the summary also written to ``output/summary.json`` (rank 0): losses,
        throughput, the sampler's share of each step, evaluation metrics before
        and after training, and (under torchrun) whether the ranks' parameters agree.
    """
    task = _CorrespondenceTask(model_config)
    for name, item in (("sampler", sampler), ("eval_sampler", eval_sampler)):
        if item is not None:
            require_fields(item, ("correspondence",), consumer=f"train_correspondence ({name})")
    if isinstance(sampler, DRRCorrespondenceSampler) and sampler.patch_size != model_config.patch_size:
        raise ValueError(
            f"model_config: patch_size {model_config.patch_size} differs from the sampler's {sampler.patch_size}"
        )
    return _train(task, sampler, config, eval_sampler)
