"""Fracture classifier: fusion modes, attention guidance, correspondence pre-training of the trunk."""

from __future__ import annotations

import pytest
import torch

from onthefly.models import ClassifierConfig, CorrespondenceModel, FractureClassifier


def small(**changes) -> FractureClassifier:
    torch.manual_seed(0)
    return FractureClassifier(ClassifierConfig.small(d_model=32, heads=2, layers=2, mlp=64, **changes)).eval()


def test_shapes_and_default_size():
    images = torch.rand(2, 3, 1, 32, 32)
    for fusion in ("single", "late", "early"):
        assert small(fusion=fusion)(images).shape == (2,)
    vit_s = FractureClassifier(ClassifierConfig())
    assert 20e6 < sum(p.numel() for p in vit_s.parameters()) < 23e6  # ViT-S: about 22 M
    assert len(vit_s.trunk.layers) == 12 and vit_s.config.d_model == 384 and vit_s.config.heads == 6


def test_late_fusion_averages_single_view_logits():
    model = small(fusion="late")
    images = torch.rand(2, 3, 1, 32, 32)
    single = FractureClassifier(ClassifierConfig.small(d_model=32, heads=2, layers=2, mlp=64, fusion="single")).eval()
    single.load_state_dict(model.state_dict())
    per_view = torch.stack([single(images[:, v : v + 1]) for v in range(3)], 1)
    torch.testing.assert_close(model(images), per_view.mean(1), atol=1e-5, rtol=1e-5)


def test_single_uses_only_the_first_view():
    model = small(fusion="single")
    images = torch.rand(2, 3, 1, 32, 32)
    changed = images.clone()
    changed[:, 1:] = torch.rand_like(changed[:, 1:])
    torch.testing.assert_close(model(images), model(changed))
    changed[:, 0] = 1 - changed[:, 0]
    assert not torch.allclose(model(images), model(changed))


def test_early_fusion_is_invariant_to_view_order_and_sees_every_view():
    model = small(fusion="early")
    images = torch.rand(2, 3, 1, 32, 32)
    torch.testing.assert_close(model(images), model(images[:, [2, 0, 1]]), atol=1e-5, rtol=1e-5)
    changed = images.clone()
    changed[:, 2] = 1 - changed[:, 2]
    assert not torch.allclose(model(images), model(changed))


def test_attention_guidance():
    model = small(attention_guidance=True)
    images = torch.rand(2, 2, 1, 32, 32)
    c = torch.rand(2, 8, 8)  # 2 views x 4 patches
    plain = small()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "alpha"})
    with torch.no_grad():
        model.alpha.zero_()
    torch.testing.assert_close(model(images, c), plain(images), atol=1e-5, rtol=1e-5)  # alpha = 0: no guidance
    with torch.no_grad():
        model.alpha.fill_(5.0)
    assert not torch.allclose(model(images, c), plain(images))
    model.train()
    model(images, c).sum().backward()
    assert model.alpha.grad is not None and torch.isfinite(model.alpha.grad).all() and model.alpha.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="correspondence"):
        model(images)
    with pytest.raises(ValueError, match="attention_guidance"):
        ClassifierConfig.small(fusion="late", attention_guidance=True)
    with pytest.raises(ValueError, match="fusion"):
        ClassifierConfig.small(fusion="middle")


def test_trunk_loads_from_a_correspondence_checkpoint(tmp_path):
    config = ClassifierConfig.small(d_model=32, heads=2, layers=2, mlp=64)
    torch.manual_seed(1)
    trained = CorrespondenceModel(config.trunk_config())
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": trained.state_dict(), "model_config": config.trunk_config().to_dict()}, path)
    classifier = FractureClassifier(config)
    classifier.load_trunk(path)
    images = torch.rand(1, 2, 1, 32, 32)
    torch.testing.assert_close(classifier.trunk.tokens(images), trained.tokens(images))
    other = FractureClassifier(ClassifierConfig.small(d_model=64, heads=2, layers=2, mlp=64))
    with pytest.raises(ValueError, match="differs"):
        other.load_trunk(path)
    with pytest.raises(FileNotFoundError, match="source"):
        classifier.load_trunk(tmp_path / "missing.pt")


def _study_tree(root, studies: int = 6):
    """A tiny MURA-like tree: one region, studies of 2-3 views; positives show a bright square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(studies):
        label = "positive" if index % 2 else "negative"
        folder = root / "train" / "XR_WRIST" / f"patient{index:05d}" / f"study1_{label}"
        folder.mkdir(parents=True)
        for view in range(2 + index % 2):
            image = (rng.random((40, 30)) * 80).astype(np.uint8)
            if label == "positive":
                image[10:20, 10:20] = 255
            Image.fromarray(image).save(folder / f"image{view + 1}.png")


def test_finetune_and_evaluate_on_real_study_folders(tmp_path):
    from onthefly.datasets import MuraStudies
    from onthefly.train import evaluate_classifier_on_studies, finetune_classifier_on_studies

    _study_tree(tmp_path)
    dataset = MuraStudies(tmp_path, split="train", views=2, image_size=32)
    model = small(fusion="late")
    losses = finetune_classifier_on_studies(model, dataset, steps=30, lr=3e-3, batch_size=3)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns the bright square
    metrics = evaluate_classifier_on_studies(model, dataset, batch_size=4)
    assert set(metrics) >= {"accuracy", "precision", "recall", "kappa"}
    assert metrics["accuracy"] >= 0.8
    guided = small(attention_guidance=True)
    with pytest.raises(ValueError, match="guidance_model"):
        evaluate_classifier_on_studies(guided, dataset)
