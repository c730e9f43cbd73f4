"""Fracture classifier: fusion modes, attention guidance, correspondence pre-training of the trunk."""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------------------
# Patch head, pooling, the CNN classifier, the detection loss and the curriculum


def test_patch_logits_cover_the_views_each_fusion_sees():
    images = torch.rand(2, 3, 1, 32, 32)
    for fusion, views in (("single", 1), ("late", 3), ("early", 3)):
        model = small(fusion=fusion)
        output = model.predict(images)
        assert output.logits.shape == (2,) and output.patch_logits.shape == (2, views, 4)
        torch.testing.assert_close(model(images, patches=True).patch_logits, output.patch_logits)
        torch.testing.assert_close(model(images), output.logits)
    pooled = small(pooling="max")
    output = pooled.predict(images)
    torch.testing.assert_close(output.logits, output.patch_logits.flatten(1).amax(1))  # at initialisation
    assert pooled.head.in_features == 1
    with pytest.raises(ValueError, match="pooling"):
        ClassifierConfig.small(pooling="sum")


def test_the_cnn_classifier_runs_with_and_without_attention():
    images = torch.rand(2, 2, 1, 32, 32)
    plain = FractureClassifier(ClassifierConfig.cnn(fusion="early", d_model=32, heads=2, mlp=64)).eval()
    assert plain.config.backbone == "vgg" and len(plain.trunk.layers) == 0
    assert plain(images).shape == (2,)
    attending = FractureClassifier(ClassifierConfig.cnn(layers=1, d_model=32, heads=2, mlp=64)).eval()
    assert len(attending.trunk.layers) == 1 and attending.predict(images).patch_logits.shape == (2, 2, 4)
    with pytest.raises(ValueError, match="attention_guidance"):
        ClassifierConfig.cnn(attention_guidance=True)  # guidance needs attention layers
    with pytest.raises(ValueError, match="layers"):
        ClassifierConfig.cnn(layers=-1)


def fake_batch(*, fracture, patch, visibility, step=0, views=2, grid=(2, 2)):
    from types import SimpleNamespace

    b = len(fracture)
    return SimpleNamespace(images=torch.rand(b, views, 1, 16 * grid[0], 16 * grid[1]),
                           fracture=torch.tensor(fracture), fracture_patch=torch.tensor(patch),
                           fracture_pixel=torch.full((b, views, 2), 8.0), patch_size=16,
                           fracture_visibility=torch.tensor(visibility), step=step, correspondence=None,
                           grid_shape=grid)


def test_patch_targets_losses_and_hits():
    from onthefly.train.classifier import _balanced_loss, _patch_hits, _patch_loss, _patch_targets

    logits = torch.zeros(2, 2, 4)  # a 2 x 2 grid of 16-pixel patches
    pixel = torch.tensor([[[23.5, 24.0], [float("nan"), float("nan")]], [[float("nan")] * 2] * 2])
    target = _patch_targets(logits, pixel, (2, 2), 16)
    assert int(target[0, 0].argmax()) == 3 and float(target[0, 0, 3]) > 0.9  # the patch holding the pixel
    assert 0 < float(target[0, 0, 1]) < float(target[0, 0, 3])  # its neighbours, less
    assert float(target[0, 1].abs().sum()) == 0.0 and float(target[1].abs().sum()) == 0.0  # no fracture: 0
    good, bad = torch.full((2, 2, 4), -5.0), torch.full((2, 2, 4), -5.0)
    good[0, 0, 3], bad[0, 0, 0] = 5.0, 5.0
    weight = torch.ones(2)
    assert float(_patch_loss(good, target, weight)) < float(_patch_loss(bad, target, weight))
    assert float(_patch_loss(bad, target, torch.tensor([0.0, 1.0]))) < 0.1  # a sample with weight 0 does not count
    # the study loss weighs both classes alike, whatever their numbers
    labels = torch.tensor([True, False, False, False])
    logits = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    single = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * (single(logits[:1], torch.ones(1)) + single(logits[1:], torch.zeros(3)))
    torch.testing.assert_close(_balanced_loss(logits, labels, torch.ones(4)), expected)
    torch.testing.assert_close(_balanced_loss(logits, labels, torch.tensor([0.0, 1, 1, 1])),
                               single(logits[1:], torch.zeros(3)))
    grid = torch.full((1, 1, 16), -1.0)
    grid[0, 0, 5] = 3.0  # row 1, column 1 of a 4 x 4 grid
    assert _patch_hits(grid, torch.tensor([[10]]), (4, 4)).tolist() == [True]  # row 2, column 2: a neighbour
    assert _patch_hits(grid, torch.tensor([[15]]), (4, 4)).tolist() == [False]
    assert _patch_hits(grid, torch.tensor([[-1]]), (4, 4)).tolist() == []


def test_the_curriculum_leaves_subtle_fractures_out_until_their_turn():
    from onthefly.train.classifier import Curriculum, _ClassifierTask

    curriculum = Curriculum(start=0.1, end=0.02, steps=100)
    assert curriculum.threshold(0) == 0.1 and curriculum.threshold(50) == 0.06 and curriculum.threshold(500) == 0.02
    model = small(fusion="early")
    task = _ClassifierTask(model.config, curriculum=curriculum, patch_weight=0.0)
    subtle = dict(fracture=[True, False], patch=[[0, 1], [-1, -1]], visibility=[[0.03, 0.01], [0.0, 0.0]])
    early, late = fake_batch(**subtle, step=0), fake_batch(**subtle, step=200)
    assert task._weights(early).tolist() == [0.0, 1.0] and task._weights(late).tolist() == [1.0, 1.0]
    with torch.no_grad():
        output = model.predict(early.images)
    import torch.nn.functional as F

    negative_only = F.binary_cross_entropy_with_logits(output.logits[1:], torch.zeros(1))  # the subtle one is out
    torch.testing.assert_close(task.loss(model, early), negative_only)
    both = task.loss(model, fake_batch(**subtle, step=200))
    assert both.requires_grad and torch.isfinite(both)
    for bad, message in ((dict(start=1.0), "start"), (dict(start=0.01, end=0.05), "end"), (dict(steps=0), "steps")):
        with pytest.raises(ValueError, match=message):
            Curriculum(**bad)
    with pytest.raises(ValueError, match="patch_weight"):
        _ClassifierTask(model.config, patch_weight=-1.0)
    with pytest.raises(TypeError, match="curriculum"):
        _ClassifierTask(model.config, curriculum=0.05)


@pytest.mark.slow
def test_the_classifier_fits_one_fixed_batch_of_simulated_fractures():
    """The classifier's model and losses can fit one fixed batch of simulated fractures (every sample right).

    Training works end to end; what this cannot show is generalisation to new
    draws, which is what fails at CPU scale (docs/fracture_table3.md).
    """
    import math

    import onthefly as otf
    from onthefly.train import split_volume
    from onthefly.train.classifier import _ClassifierTask

    torch.manual_seed(0)
    part, _ = split_volume(otf.example_volume(labels=True), fraction=0.6)
    sampler = otf.DRRCorrespondenceSampler(
        volumes=[part], seed=5, alpha=(0.0, math.pi), augmentation=None, views=2, image_size=64, patch_size=16,
        crop_size=112.0, spacing=3.0, batch_size=8, correspondence=False,
        fractures=otf.FractureConfig(probability=0.5))
    batch = sampler.sample(0)
    assert 0 < int(batch.fracture.sum()) < 8
    task = _ClassifierTask(ClassifierConfig.cnn(layers=1, pooling="max", fusion="early"))
    model = task.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    first = None
    for _ in range(120):
        loss = task.loss(model, batch)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model.predict(batch.images, None).logits
    assert float(loss.detach()) < 0.5 * first
    assert torch.equal(logits > 0, batch.fracture)


@pytest.mark.parametrize("patches", [4, 64])
def test_patch_loss_keeps_patch_logits_calibrated(patches):
    """With targets drawn Bernoulli(p), the patch loss's expected value is smallest at logit = logit(p), for any
    p: positives weigh as all negatives without shifting the logits (an intact view's largest patch logit,
    the study logit of pooling="max", then stays below 0)."""
    from onthefly.train.classifier import _patch_loss

    for p in (0.01, 0.2, 0.7):
        logit = torch.full((1, 1, patches), math.log(p / (1 - p)), requires_grad=True)
        weight = torch.ones(1)
        expected = p * _patch_loss(logit, torch.ones(1, 1, patches), weight) + (1 - p) * _patch_loss(
            logit, torch.zeros(1, 1, patches), weight)
        (gradient,) = torch.autograd.grad(expected, logit)
        assert float(gradient.abs().max()) < 1e-6, (p, float(gradient.abs().max()))


@pytest.mark.slow
def test_the_cnn_classifier_finds_a_faint_marker_on_anatomy_it_never_saw():
    """The default CNN classifier learns a small square raised by 0.1 (display units) on DRRs of one part of the
    CT and finds it on DRRs of the other part: the contrast the fractures reach in their best view
    (examples/classifier_control.py is the full-size version)."""
    import onthefly as otf
    from onthefly.train import split_volume
    from onthefly.train.classifier import _ClassifierTask

    torch.manual_seed(0)
    size, edge, batch_size = 64, 6, 16
    train_part, held_out = split_volume(otf.example_volume(), fraction=0.6)

    def backgrounds(volume, seed, batches):
        sampler = otf.DRRCorrespondenceSampler(
            volumes=[volume], seed=seed, views=2, image_size=size, patch_size=16, crop_size=112.0, spacing=3.0,
            batch_size=batch_size, correspondence=False, augmentation=None,
            display="minmax")  # the smooth min-max views this control was sized on (a radiograph has more texture)
        return torch.cat([sampler.sample(step).images for step in range(batches)])

    def marked(images, generator):
        from types import SimpleNamespace

        chosen = images[torch.randint(len(images), (batch_size,), generator=generator)].clone()
        label = torch.rand(batch_size, generator=generator) < 0.5
        pixel = torch.full((batch_size, 2, 2), float("nan"))
        for sample in torch.nonzero(label)[:, 0].tolist():
            top, left = torch.randint(0, size - edge + 1, (2,), generator=generator).tolist()
            chosen[sample, :, 0, top:top + edge, left:left + edge] += 0.1
            pixel[sample] = torch.tensor([top + (edge - 1) / 2, left + (edge - 1) / 2])
        return SimpleNamespace(images=chosen.clamp(0, 1), fracture=label, fracture_pixel=pixel,
                               grid_shape=(size // 16, size // 16), patch_size=16, correspondence=None, step=0)

    train_images, test_images = backgrounds(train_part, 0, 8), backgrounds(held_out, 1, 2)
    task = _ClassifierTask(ClassifierConfig.cnn(layers=0, pooling="max", fusion="early"))
    model = task.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = task.loss(model, marked(train_images, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    right = 0
    with torch.no_grad():
        for _ in range(4):
            batch = marked(test_images, generator)
            right += int(((model.predict(batch.images, None).logits > 0) == batch.fracture).sum())
    assert right / (4 * batch_size) >= 0.85
