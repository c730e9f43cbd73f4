"""A crop-and-resize augmentation checked for correspondence preservation.

The augmentation crops the central half of every view and resizes it back to
the full size; it returns the new images and the C-arm that sees them (the
same poses, pixels half as large), whose correspondence matrix is the
supervision of the augmented views. The property test checks that the new
camera puts every point of tissue where the image transform moved it, that
it renders what the augmentation shows, and that its correspondence matrix
matches the patches those points land in. The variant with a planted bug (the
pixel spacing scaled the wrong way) fails it (``tests/test_testing.py``).

Run: ``pytest examples/property_tests/test_crop_and_resize.py``.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onthefly import CArm, patch_correspondence, project_points, render
from onthefly.testing import assert_correspondence_valid, assert_points_correspond, tissue_points
from onthefly.testing.strategies import scenes


def crop_and_resize(images: torch.Tensor, carm: CArm, *, zoom: int = 2, wrong_spacing: bool = False):
    """Central ``1 / zoom`` of each ``(B, V, 1, H, W)`` view, resized (bilinear) back to ``H x W``, and its C-arm."""
    height, width = carm.height, carm.width
    crop_h, crop_w = height // zoom, width // zoom
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = images[..., top : top + crop_h, left : left + crop_w]
    resized = torch.nn.functional.interpolate(cropped.flatten(0, 1), size=(height, width), mode="bilinear",
                                              align_corners=False).unflatten(0, images.shape[:2])
    spacing = carm.pixel_spacing * zoom if wrong_spacing else carm.pixel_spacing / zoom  # the planted bug
    zoomed = CArm(alpha=carm.alpha, beta=carm.beta, gamma=carm.gamma, sid=carm.sid, sdd=carm.sdd,
                  isocenter=carm.isocenter, height=height, width=width, pixel_spacing=spacing)
    return resized, zoomed, (top, left)


def augmentation_property(augment, **options):
    """The property test of ``augment(images, carm) -> (images, carm, (top, left))`` with a zoom of 2."""

    @settings(**({"max_examples": 8, "deadline": None} | options))
    @given(scene=scenes(max_batch=1, footprints=st.just(None)), seed=st.integers(0, 1000))
    def test(scene, seed):
        volume, carm, patch = scene.volumes[0], scene.carm, scene.patch_size
        images = render(volume, carm)
        augmented, zoomed, (top, left) = augment(images, carm)
        points = tissue_points(volume, 32, seed=seed)
        # 1. The new camera puts each point where the crop and the resize moved its pixel.
        moved = (project_points(carm, points) - torch.tensor([top, left]) + 0.5) * 2 - 0.5
        torch.testing.assert_close(project_points(zoomed, points), moved, atol=1e-3, rtol=0)
        # 2. It renders what the augmentation shows (up to the resize's interpolation).
        rendered = render(volume, zoomed)
        assert float((rendered - augmented).abs().mean()) <= 0.1 * float(rendered.abs().mean()) + 1e-6
        # 3. Its correspondence matrix matches the patches the points of tissue land in.
        c = patch_correspondence(volume, zoomed, patch_size=patch)
        assert_correspondence_valid(c, scene.grid, views=carm.batch_shape[1])
        assert_points_correspond(c, zoomed, points, patch)

    return test


test_crop_and_resize_preserves_correspondence = augmentation_property(crop_and_resize)
