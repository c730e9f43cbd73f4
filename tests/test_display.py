"""How line integrals become images: min-max (the default) and the processed radiograph display."""

from __future__ import annotations

import pytest
import torch

import onthefly as otf
from onthefly.display import DISPLAYS, Display, as_display, to_display
from onthefly.sampling import SamplerConfig

RADIOGRAPH = DISPLAYS["radiograph"]


def smooth_views(seed: int = 0, shape=(2, 3, 32, 40)) -> torch.Tensor:
    """Line-integral-like views: a broad ramp and blob (background) plus fine random detail."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.linspace(-1, 1, shape[-2])[:, None]
    cols = torch.linspace(-1, 1, shape[-1])[None, :]
    background = 3.0 * torch.exp(-(rows**2 + cols**2)) + rows
    detail = 0.1 * torch.rand(shape, generator=generator)
    return background + detail


def test_the_default_display_is_min_max_scaling():
    views = smooth_views()
    assert Display().is_minmax and as_display("minmax") == Display()
    assert torch.equal(Display()(views, pixel_spacing=1.0), to_display(views))
    assert torch.equal(otf.projector.to_display(views), to_display(views))  # still importable where it was
    flat = views.flatten(-2)
    torch.testing.assert_close(Display().width(views, pixel_spacing=1.0), flat.amax(-1) - flat.amin(-1))


def test_radiograph_display_stays_in_range_and_saturates_the_clipped_share():
    views = smooth_views()
    images = RADIOGRAPH(views, pixel_spacing=1.0)
    assert images.shape == views.shape and bool(torch.isfinite(images).all())
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    saturated = ((images == 0) | (images == 1)).flatten(-2).float().mean(-1)
    # 2 % at each end of a regular subsample: about 4 % of the pixels, never most of them
    assert bool((saturated > 0.01).all()) and bool((saturated < 0.1).all())
    constant = RADIOGRAPH(torch.full((1, 1, 16, 16), 2.5), pixel_spacing=1.0)
    assert torch.equal(constant, torch.zeros_like(constant))  # a flat view is black, never NaN


def test_radiograph_display_ignores_offset_and_scale_of_the_line_integrals():
    views = smooth_views(1)
    images = RADIOGRAPH(views, pixel_spacing=0.8)
    torch.testing.assert_close(RADIOGRAPH(2.5 * views + 7.0, pixel_spacing=0.8), images, atol=1e-5, rtol=0)


def test_radiograph_display_of_a_batch_equals_the_loop():
    views = smooth_views(2)
    images = RADIOGRAPH(views, pixel_spacing=1.5)
    for b in range(views.shape[0]):
        for v in range(views.shape[1]):
            torch.testing.assert_close(RADIOGRAPH(views[b, v], pixel_spacing=1.5), images[b, v])


def test_radiograph_display_raises_fine_detail_against_the_background():
    # A 1-pixel-wide line of 0.05 on a background spanning 4: min-max shows it at about 1 %, the
    # radiograph display at several times that, and the change over the window width predicts it.
    views = smooth_views(3, shape=(1, 1, 64, 64))
    views = views - 0.1 * torch.rand(views.shape, generator=torch.Generator().manual_seed(0))  # no detail
    line = torch.zeros_like(views)
    line[..., 20:44, 32] = 0.05
    for display, least in ((Display(), 0.005), (RADIOGRAPH, 0.05)):
        change = (display(views + line, pixel_spacing=1.0) - display(views, pixel_spacing=1.0)).abs().max()
        predicted = 0.05 / display.width(views, pixel_spacing=1.0).max()
        assert float(change) > least
        torch.testing.assert_close(change, predicted, rtol=0.25, atol=0)
    minmax = (to_display(views + line) - to_display(views)).abs().max()
    processed = (RADIOGRAPH(views + line, pixel_spacing=1.0) - RADIOGRAPH(views, pixel_spacing=1.0)).abs().max()
    assert float(processed) > 4 * float(minmax)


def test_detail_is_measured_in_mm_on_the_detector():
    # The same view sampled on a twice finer detector (pixel spacing halved) looks the same.
    coarse = smooth_views(4, shape=(1, 1, 32, 32))
    fine = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    shown_fine = RADIOGRAPH(fine, pixel_spacing=0.5)
    shown_coarse = RADIOGRAPH(coarse, pixel_spacing=1.0)
    pooled = torch.nn.functional.avg_pool2d(shown_fine, 2)
    assert float((pooled - shown_coarse).abs().mean()) < 0.03


def test_radiograph_display_has_no_graph_breaks():
    explanation = torch._dynamo.explain(lambda x: RADIOGRAPH(x, pixel_spacing=1.0))(smooth_views())
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_radiograph_display_is_differentiable():
    views = smooth_views(5, shape=(1, 1, 12, 12)).double().requires_grad_()
    display = Display(detail=3.0, background=0.3, clip=0.0)
    assert torch.autograd.gradcheck(lambda x: display(x, pixel_spacing=1.0), (views,))


@pytest.mark.parametrize(("changes", "name", "error"), [
    ({"detail": 0.0}, "detail", ValueError), ({"detail": float("nan")}, "detail", ValueError),
    ({"detail": True}, "detail", TypeError), ({"background": 1.5}, "background", ValueError),
    ({"background": -0.1}, "background", ValueError), ({"clip": 0.5}, "clip", ValueError),
    ({"clip": -0.01}, "clip", ValueError), ({"clip": "2%"}, "clip", TypeError),
])
def test_bad_display_settings_are_rejected_with_the_field_named(changes, name, error):
    with pytest.raises(error, match=name):
        Display(**changes)


def test_bad_display_choice_and_pixel_spacing_are_rejected():
    with pytest.raises(ValueError, match="display: expected one of"):
        SamplerConfig(display="log")
    with pytest.raises(ValueError, match="display"):
        as_display(None)
    with pytest.raises(ValueError, match="pixel_spacing"):
        RADIOGRAPH(smooth_views(), pixel_spacing=0.0)


def test_sampler_config_takes_a_display_and_keeps_old_fingerprints():
    """The radiograph display is the default; min-max configurations keep the fingerprints they always had."""
    assert SamplerConfig(batch_size=2).display == RADIOGRAPH
    plain = SamplerConfig(batch_size=2, display="minmax")
    assert plain.display == Display() and "display" not in plain.describe()
    processed = SamplerConfig(batch_size=2)
    assert processed.display == RADIOGRAPH
    assert processed.describe()["display"]["detail"] == 5.0
    assert processed.fingerprint() != plain.fingerprint()
    assert SamplerConfig(batch_size=2, display=Display(detail=5.0, background=0.2, clip=0.02)).fingerprint() \
        == processed.fingerprint()


def test_sampler_views_use_the_display(ct):
    volume = ct.crop_mm((0.0, 0.0, 0.0), 120.0).resample(4.0)
    settings = dict(volumes=[volume], views=2, image_size=32, patch_size=16, crop_size=100.0, spacing=4.0,
                    batch_size=2, augmentation=None, correspondence=False, return_volume=True, seed=3)
    plain = otf.DRRCorrespondenceSampler(**settings, display="minmax").sample(0)
    processed = otf.DRRCorrespondenceSampler(**settings)
    batch = processed.sample(0)
    lines = otf.render(batch.volume, batch.carm)
    torch.testing.assert_close(plain.images, to_display(lines))
    torch.testing.assert_close(batch.images, RADIOGRAPH(lines, pixel_spacing=processed.config.pixel_spacing))
    assert not torch.allclose(batch.images, plain.images, atol=0.05)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("display", ["to_display", "minmax", "radiograph"])
def test_non_finite_line_integrals_are_refused_by_name(bad, display):
    """One NaN would otherwise turn its whole view NaN through the window."""
    lines = torch.rand(1, 2, 1, 16, 16)
    lines[0, 1, 0, 5, 7] = bad
    show = to_display if display == "to_display" else (lambda x: DISPLAYS[display](x, pixel_spacing=1.0))
    with pytest.raises(ValueError, match="line_integrals: expected finite values, found 1 NaN or infinite"):
        show(lines)
