"""Real radiographs (multi-view studies, e.g. :class:`onthefly.datasets.MuraStudies`): evaluation and fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import is_int
from ..metrics import classification_metrics
from ..models import FractureClassifier

__all__ = ["evaluate_classifier_on_studies", "finetune_classifier_on_studies"]


def _study_logits(model: FractureClassifier, images: Tensor, guidance_model: torch.nn.Module | None) -> Tensor:
    correspondence = None
    if model.config.attention_guidance:
        if guidance_model is None:
            raise ValueError("guidance_model: attention guidance on real radiographs needs a correspondence model "
                             "to predict C (there is no ground truth)")
        with torch.no_grad():
            correspondence = guidance_model.eval()(images).float()
    return model(images, correspondence)


@torch.no_grad()
def evaluate_classifier_on_studies(model: FractureClassifier, dataset, *, batch_size: int = 8,
                                   device: torch.device | str = "cpu",
                                   guidance_model: torch.nn.Module | None = None) -> dict[str, float]:
    """Accuracy, precision, recall and Cohen's kappa of ``model`` on a dataset of studies.

    ``dataset`` yields dicts with ``images (V, 1, H, W)`` and ``label`` (as
    :class:`~onthefly.datasets.MuraStudies`); with attention guidance,
    ``guidance_model`` (a correspondence model) predicts ``C``.
    """
    from ..datasets import collate_studies

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_studies)
    was_training = model.training
    model.eval().to(device)
    if guidance_model is not None:
        guidance_model.to(device)
    logits, labels = [], []
    for batch in loader:
        images = batch["images"].to(device)
        logits.append(_study_logits(model, images, guidance_model).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    metrics = classification_metrics(logits > 0, labels)
    metrics["loss"] = float(F.binary_cross_entropy_with_logits(logits, labels.float()))
    return metrics


def finetune_classifier_on_studies(model: FractureClassifier, dataset, *, steps: int, lr: float = 1e-5,
                                   batch_size: int = 8, device: torch.device | str = "cpu", seed: int = 0,
                                   guidance_model: torch.nn.Module | None = None) -> list[float]:
    """Fine-tune a classifier on real multi-view studies (binary cross-entropy); returns the losses.

    Batches are drawn with a seeded shuffle, epoch after epoch (``dataset.set_epoch``
    is called when it exists), for ``steps`` optimisation steps.
    """
    from ..datasets import collate_studies

    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    model.train().to(device)
    if guidance_model is not None:
        guidance_model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                             collate_fn=collate_studies)
        for batch in loader:
            images, labels = batch["images"].to(device), batch["label"].to(device)
            loss = F.binary_cross_entropy_with_logits(_study_logits(model, images, guidance_model).float(),
                                                      labels.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return losses
