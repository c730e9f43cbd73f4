"""Anatomical variation: the deformation's geometry, its determinism, and exact correspondence in the sampler."""

from __future__ import annotations

import pytest
import torch

from onthefly import DRRCorrespondenceSampler, Volume, patch_correspondence
from onthefly.deformation import AnatomyParams, AnatomyVariation, deform_crops
from onthefly.volume import attenuation_to_hu


def params_of(matrix, displacement, batch=1, points=4) -> AnatomyParams:
    matrix = torch.as_tensor(matrix, dtype=torch.float64).expand(batch, 3, 3).clone()
    field = torch.as_tensor(displacement, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return AnatomyParams(matrix=matrix, displacement=field.expand(batch, 3, points, points, points).clone())


def centroid(volume: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre ``(3,)`` of a ``(D, H, W)`` tensor, in voxels from the grid's centre."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in volume.shape], indexing="ij")
    weight = volume.double()
    return torch.stack([(g * weight).sum() / weight.sum() for g in grids])


def blob(shape=(21, 21, 21), at=(3.0, -2.0, 4.0), width=1.5) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape], indexing="ij")
    distance = sum((g - c) ** 2 for g, c in zip(grids, at))
    return 0.02 * torch.exp(-distance / (2 * width**2))


def test_identity_scale_and_translation_move_structures_as_defined():
    """Output voxel y reads x = A^-1 y + u: a structure at z appears at A (z - u) for a constant u."""
    volume = blob()[None]
    spacing = (2.0, 2.0, 2.0)
    same, _ = deform_crops(volume, None, params_of(torch.eye(3), (0.0, 0.0, 0.0)), spacing)
    torch.testing.assert_close(same, volume, atol=1e-6, rtol=0)
    scale = torch.diag(torch.tensor([1.2, 0.9, 1.0], dtype=torch.float64))
    scaled, _ = deform_crops(volume, None, params_of(scale, (0.0, 0.0, 0.0)), spacing)
    torch.testing.assert_close(centroid(scaled[0]), scale @ centroid(volume[0]), atol=0.05, rtol=0)
    shift = torch.tensor([4.0, -2.0, 2.0])  # mm: reads 2, -1, 1 voxels further
    moved, _ = deform_crops(volume, None, params_of(torch.eye(3), shift), spacing)
    torch.testing.assert_close(centroid(moved[0]), centroid(volume[0]) - shift.double() / 2.0, atol=0.05, rtol=0)


def test_labels_follow_the_same_deformation_and_stay_labels():
    attenuation = blob()[None]
    labels = (attenuation > 0.01).to(torch.int16) * 7
    params = AnatomyVariation(scale=0.1, shear=0.05, elastic=3.0).draw(1, torch.Generator().manual_seed(2))
    deformed, deformed_labels = deform_crops(attenuation, labels, params, (2.0, 2.0, 2.0))
    assert set(deformed_labels.unique().tolist()) <= {0, 7}
    inside = deformed_labels == 7
    # Labels were 7 where the attenuation exceeded 0.01; nearest and trilinear reads differ by at most half a
    # voxel, where the blob changes by under 0.004 (its steepest slope is 0.0079 per voxel).
    assert float(deformed[inside].min()) > 0.006 and float(deformed[~inside].max()) < 0.014
    assert 0.5 < inside.sum() / (labels == 7).sum() < 1.6  # the labelled blob rescaled by at most 10 % per axis


def test_draws_are_seeded_and_within_their_ranges():
    variation = AnatomyVariation(scale=0.1, shear=0.05, elastic=4.0, control_points=6)
    a = variation.draw(8, torch.Generator().manual_seed(3))
    b = variation.draw(8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.matrix, b.matrix, rtol=0, atol=0)
    diagonal = torch.diagonal(a.matrix, dim1=-2, dim2=-1)
    assert bool(((diagonal >= 0.9) & (diagonal <= 1.1)).all())
    assert a.displacement.shape == (8, 3, 6, 6, 6) and float(a.displacement.abs().max()) <= 4.0
    assert float(torch.tril(a.matrix, -1).abs().max()) == 0.0


@pytest.mark.parametrize("changes, message", [(dict(scale=-0.1), "scale"), (dict(scale=0.9), "scale"),
                                              (dict(shear=float("nan")), "shear"), (dict(elastic=100.0), "elastic"),
                                              (dict(control_points=2), "control_points"),
                                              (dict(control_points=4.5), "control_points")])
def test_bad_settings_are_refused_by_name(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        AnatomyVariation(**changes)


def test_deformation_has_no_graph_breaks():
    params = AnatomyVariation().draw(2, torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(deform_crops)(torch.rand(2, 8, 9, 10), None, params, torch.tensor([2.0] * 3))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_sampler_correspondence_is_that_of_the_deformed_crop(ct_small):
    """anatomy=AnatomyVariation(...): the sampler's matrix equals patch_correspondence of the crop deformed
    explicitly with the drawn parameters (the ground truth stays exact), and the images change."""
    settings = dict(volumes=[ct_small], views=2, image_size=32, patch_size=8, crop_size=150.0, spacing=6.0,
                    batch_size=2, augmentation=None, seed=4)
    plain = DRRCorrespondenceSampler(**settings).sample(0)
    sampler = DRRCorrespondenceSampler(anatomy=AnatomyVariation(scale=0.1, shear=0.05, elastic=6.0), **settings)
    batch = sampler.sample(0)
    assert not torch.equal(batch.images, plain.images)
    crops, _ = sampler.store.crops(batch.params.volume_index, batch.params.crop_start, sampler.config.crop_voxels())
    deformed, _ = deform_crops(crops, None, batch.params.anatomy, torch.tensor(sampler.config.spacing))
    for i in range(2):
        volume = Volume(hu=attenuation_to_hu(deformed[i])[None], affine=batch.crop_affine[i].to(torch.float64))
        edge = float(batch.params.coarse_factor[i, 0]) * 6.0
        expected = patch_correspondence(volume, batch.carm.select(i), patch_size=8, coarse_voxel_size=edge)
        torch.testing.assert_close(batch.correspondence[i:i + 1], expected, atol=1e-5, rtol=0)
    again = sampler.make_batch(sampler.draw(0))
    torch.testing.assert_close(again.images, batch.images, rtol=0, atol=0)
