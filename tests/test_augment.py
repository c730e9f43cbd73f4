"""Augmentation: drawn parameters, intensity (compile-clean, blur always applied), flips and quarter turns."""

from __future__ import annotations

import kornia
import pytest
import torch

from onthefly import Augmentation
from onthefly.augment import AugmentationParams, _intensity, apply_geometric, apply_intensity


def constant_params(batch: int, views: int, **values) -> AugmentationParams:
    defaults = dict(brightness=0.0, contrast=1.0, gamma=1.0, invert=False, noise=0.0, blur=0.0, operation=0)
    defaults.update(values)
    full = {}
    for name, value in defaults.items():
        dtype = torch.bool if name == "invert" else torch.long if name == "operation" else torch.float32
        full[name] = torch.full((batch, views), value, dtype=dtype)
    return AugmentationParams(**full)


def test_blur_uses_the_drawn_sigma_whatever_device_the_parameters_are_on():
    images = torch.rand(2, 2, 1, 24, 24)
    params = constant_params(2, 2, blur=1.0)
    out = apply_intensity(images, params, torch.Generator().manual_seed(0), max_blur=1.5)
    size = 2 * 5 + 1  # 2 ceil(3 * 1.5) + 1, from the settings, not from the draw
    expected = kornia.filters.gaussian_blur2d(images.view(4, 1, 24, 24), (size, size), torch.ones(4, 2))
    torch.testing.assert_close(out.view(4, 1, 24, 24), expected.clamp(0, 1), atol=1e-6, rtol=0)
    assert not torch.allclose(out, images)


def test_intensity_augmentation_compiles_without_graph_breaks():
    images = torch.rand(2, 3, 1, 16, 16)
    params = Augmentation(blur=1.0, noise=0.05).draw(2, 3, torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    explained = torch._dynamo.explain(_intensity)(images, params, noise, 1.0)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_intensity_needs_an_explicit_generator_and_leaves_the_global_rng_alone():
    images = torch.rand(1, 2, 1, 8, 8)
    params = Augmentation().draw(1, 2, torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    apply_intensity(images, params, torch.Generator().manual_seed(3), max_blur=0.5)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError, match="generator"):
        apply_intensity(images, params, None, max_blur=0.5)
    with pytest.raises(ValueError, match="max_blur"):
        apply_intensity(images, params, torch.Generator(), max_blur=-1.0)


def test_non_square_views_flip_and_refuse_quarter_turns():
    image = torch.arange(6.0).view(1, 1, 1, 2, 3)
    flipped, _ = apply_geometric(image, torch.tensor([[1]]))  # hflip
    torch.testing.assert_close(flipped, image.flip(-1))
    flipped, _ = apply_geometric(image, torch.tensor([[2]]))  # vflip
    torch.testing.assert_close(flipped, image.flip(-2))
    for turn in (3, 5):  # rot90, rot270
        with pytest.raises(ValueError, match="quarter turns need square images, got 2 x 3"):
            apply_geometric(image, torch.tensor([[turn]]))
    with pytest.raises(ValueError, match="operation"):
        apply_geometric(image, torch.tensor([[9]]))


@pytest.mark.parametrize(
    "changes, message",
    [(dict(blur=1000.0), "blur"), (dict(noise=float("nan")), "noise"), (dict(gamma=-1.0), "gamma"),
     (dict(contrast=1.0), "contrast"), (dict(invert=True), "invert"), (dict(operations=("shear",)), "operations"),
     (dict(brightness=2.0), "brightness")],
)
def test_bad_settings_are_refused_when_built(changes, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**changes)
