"""Volumes: builders, the voxel-to-world convention, crops, resampling, batches and input checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from onthefly import MU_WATER_PER_MM, Volume, VolumeBatch, attenuation_to_hu, hu_to_attenuation

F64 = torch.float64

# An oblique voxel-to-world matrix: axes permuted, one flipped, anisotropic, translated.
OBLIQUE_AFFINE = np.array(
    [[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, -1.25, 7.0], [0.0, 0.0, 0.0, 1.0]]
)


def world(volume: Volume, index) -> torch.Tensor:
    """World mm of the centre of voxel ``index`` (computed here, from the affine)."""
    homogeneous = torch.tensor([*index, 1.0], dtype=F64)
    return (volume.affine @ homogeneous)[:3]


def bounding_box(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return points.amin(0), points.amax(0)


def write_nifti(path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


# ----------------------------------------------------------------------- conventions


def test_convention_voxel_index_maps_to_world_by_the_nifti_affine(tmp_path):
    """``hu[0, i, j, k]`` is the NIfTI array's ``data[i, j, k]``, centred at ``affine @ (i, j, k, 1)``."""
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 100.0  # every voxel distinct
    write_nifti(tmp_path / "ct.nii.gz", data, OBLIQUE_AFFINE)
    volume = Volume.from_file(tmp_path / "ct.nii.gz")
    assert volume.hu.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(volume.hu[0].numpy(), data)
    np.testing.assert_allclose(volume.affine.numpy(), OBLIQUE_AFFINE)
    # nibabel's own voxel-to-world map agrees with the affine the volume carries.
    for index in [(0, 0, 0), (3, 1, 5), (2, 4, 0)]:
        expected = nib.affines.apply_affine(OBLIQUE_AFFINE, index)
        np.testing.assert_allclose(world(volume, index).numpy(), expected)
    # spacing is per index axis (D, H, W), whatever the axis order in the world.
    np.testing.assert_allclose(volume.spacing.numpy(), [2.0, 1.5, 1.25])


def test_convention_from_tensor_spacing_and_origin_place_voxels():
    volume = Volume.from_tensor(torch.zeros(3, 4, 5), spacing=(2.0, 3.0, 0.5), origin=(10.0, -20.0, 30.0))
    for index in [(0, 0, 0), (2, 3, 4), (1, 0, 3)]:
        expected = torch.tensor([10.0 + 2.0 * index[0], -20.0 + 3.0 * index[1], 30.0 + 0.5 * index[2]], dtype=F64)
        torch.testing.assert_close(world(volume, index), expected)


def test_convention_hu_to_attenuation_formula_and_clamp():
    hu = torch.tensor([-3000.0, -1000.0, -999.0, -500.0, 0.0, 400.0, 1000.0, 3000.0])
    expected = torch.tensor([0.0, 0.0, 0.001, 0.5, 1.0, 1.4, 2.0, 4.0]) * MU_WATER_PER_MM
    torch.testing.assert_close(hu_to_attenuation(hu), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(hu_to_attenuation(hu, mu_water=0.03), expected / MU_WATER_PER_MM * 0.03, rtol=1e-6, atol=1e-9)
    # Water near 60-70 keV: about 0.02 per mm.
    assert 0.018 <= MU_WATER_PER_MM <= 0.022
    # attenuation_to_hu inverts it wherever mu > 0.
    positive = hu > -1000
    torch.testing.assert_close(attenuation_to_hu(hu_to_attenuation(hu))[positive], hu[positive], rtol=1e-5, atol=1e-3)
    volume = Volume.from_tensor(hu.reshape(1, 2, 4))
    torch.testing.assert_close(volume.attenuation()[0].flatten(), expected)


def test_convention_example_volume_is_ras(ct):
    """Anatomy of the bundled CT: the liver at +x (patient's right), sternum anterior (+y), T1 superior (+z)."""
    names = {name: label for label, name in ct.label_names.items()}

    def centroid(name: str) -> torch.Tensor:
        index = torch.nonzero(ct.labels[0] == names[name]).double().mean(0)
        return ct.affine[:3, :3] @ index + ct.affine[:3, 3]

    assert centroid("liver")[0] > 20.0 > -20.0 > centroid("spleen")[0]
    assert centroid("kidney_right")[0] > 0.0 > centroid("kidney_left")[0]
    assert centroid("sternum")[1] > centroid("spinal_cord")[1] + 50.0
    assert centroid("vertebrae_T1")[2] > centroid("vertebrae_L1")[2] + 100.0


# ------------------------------------------------------------------------- builders


def test_from_tensor_default_is_unit_spacing_centred():
    volume = Volume.from_tensor(torch.zeros(1, 4, 6, 8))
    assert volume.shape == (4, 6, 8)
    assert volume.hu.dtype == torch.float32 and volume.affine.dtype == F64
    torch.testing.assert_close(volume.spacing, torch.ones(3, dtype=F64))
    torch.testing.assert_close(volume.center, torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("spacing", [2.5, (1.0, 2.0, 3.0), torch.tensor([0.5, 0.5, 4.0])])
def test_from_tensor_spacing_centres_the_volume(spacing):
    volume = Volume.from_tensor(torch.zeros(5, 6, 7), spacing=spacing)
    expected = torch.as_tensor(spacing, dtype=F64).expand(3)
    torch.testing.assert_close(volume.spacing, expected)
    torch.testing.assert_close(torch.diagonal(volume.affine[:3, :3]), expected)
    torch.testing.assert_close(volume.center, torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)


def test_from_tensor_affine_is_kept():
    affine = torch.as_tensor(OBLIQUE_AFFINE)
    hu = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 100
    labels = torch.randint(0, 3, (3, 4, 5), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    volume = Volume.from_tensor(hu, affine=affine, labels=labels)
    torch.testing.assert_close(volume.affine, affine)
    torch.testing.assert_close(volume.hu[0], hu)
    torch.testing.assert_close(volume.labels[0], labels)
    np.testing.assert_allclose(volume.spacing.numpy(), [2.0, 1.5, 1.25])


def test_from_file_round_trip_with_labels(tmp_path):
    generator = torch.Generator().manual_seed(2)
    hu = (torch.rand(6, 7, 5, generator=generator) * 2000 - 1000).numpy().astype(np.float32)
    labels = torch.randint(0, 4, (6, 7, 5), generator=generator).numpy().astype(np.uint8)
    affine = OBLIQUE_AFFINE.copy()
    write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    write_nifti(tmp_path / "labels.nii.gz", labels, affine)
    volume = Volume.from_file(tmp_path / "ct.nii.gz", labels=tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(volume.hu[0].numpy(), hu)
    np.testing.assert_allclose(volume.affine.numpy(), affine)
    assert volume.labels is not None and not volume.labels.is_floating_point()
    np.testing.assert_array_equal(volume.labels[0].numpy(), labels)


def test_from_torchio_scalar_image_and_subject():
    generator = torch.Generator().manual_seed(3)
    hu = torch.rand(1, 5, 4, 6, generator=generator) * 1500 - 1000
    labels = torch.randint(0, 5, (1, 5, 4, 6), generator=generator)
    affine = OBLIQUE_AFFINE.copy()
    image = tio.ScalarImage(tensor=hu, affine=affine)
    from_image = Volume.from_torchio(image)
    torch.testing.assert_close(from_image.hu, hu)
    np.testing.assert_allclose(from_image.affine.numpy(), affine)
    assert from_image.labels is None

    subject = tio.Subject(ct=image, segmentation=tio.LabelMap(tensor=labels, affine=affine))
    from_subject = Volume.from_torchio(subject, label_names={1: "one"})
    torch.testing.assert_close(from_subject.hu, hu)
    np.testing.assert_allclose(from_subject.affine.numpy(), affine)
    torch.testing.assert_close(from_subject.labels.long(), labels)
    assert from_subject.label_names == {1: "one"}


def test_example_volume(ct):
    assert ct.shape == (512, 512, 133)
    assert ct.hu.shape == (1, 512, 512, 133)
    torch.testing.assert_close(ct.spacing, torch.tensor([0.703125, 0.703125, 2.5], dtype=F64))
    torch.testing.assert_close(ct.center, torch.zeros(3, dtype=F64), rtol=0, atol=1e-9)
    assert float(ct.hu.min()) <= -1000.0 and float(ct.hu.max()) > 1000.0  # air and bone present
    assert 0.2 < float((ct.hu < -900).float().mean()) < 0.8
    assert ct.labels is not None and ct.labels.shape == ct.hu.shape
    present = set(torch.unique(ct.labels).tolist()) - {0}
    assert len(present) > 20
    assert present <= set(ct.label_names), "every label in the map has a name"
    assert all(isinstance(name, str) and name for name in ct.label_names.values())
    assert {"liver", "heart", "spinal_cord"} <= set(ct.label_names.values())


# ------------------------------------------------------------------- crop, resample


def test_crop_keeps_world_positions(ct):
    start, stop = (100, 37, 10), (180, 301, 90)
    cropped = ct.crop(start, stop)
    assert cropped.shape == (80, 264, 80)
    assert cropped.labels.shape == cropped.hu.shape
    for index in [(0, 0, 0), (79, 263, 79), (5, 100, 42)]:
        original = tuple(i + s for i, s in zip(index, start))
        torch.testing.assert_close(world(cropped, index), world(ct, original))
        assert cropped.hu[(0, *index)] == ct.hu[(0, *original)]
        assert cropped.labels[(0, *index)] == ct.labels[(0, *original)]


@pytest.mark.parametrize("center, size", [((10.0, -20.0, 5.0), (50.0, 40.0, 30.0)), ((0.0, 0.0, 0.0), 101.3)])
def test_crop_mm_covers_the_requested_box(ct, center, size):
    cropped = ct.crop_mm(center, size)
    center_t = torch.tensor(center, dtype=F64)
    half = torch.as_tensor(size, dtype=F64).expand(3) / 2
    low, high = bounding_box(cropped.world_corners())
    assert bool((low <= center_t - half + 1e-9).all()) and bool((high >= center_t + half - 1e-9).all())
    # ... and overshoots it by less than one voxel on each side.
    spacing = torch.tensor([0.703125, 0.703125, 2.5], dtype=F64)
    assert bool((low > center_t - half - spacing).all()) and bool((high < center_t + half + spacing).all())
    torch.testing.assert_close(cropped.spacing, ct.spacing)


def test_resample_keeps_the_box_and_centre(ct, ct_small):
    torch.testing.assert_close(ct_small.center, ct.center, rtol=0, atol=1e-9)
    torch.testing.assert_close(bounding_box(ct_small.world_corners()), bounding_box(ct.world_corners()), rtol=0, atol=1e-9)
    extent = torch.tensor(ct.shape, dtype=F64) * ct.spacing
    counts = torch.tensor(ct_small.shape, dtype=F64)
    # Spacing is the request up to the rounding of the voxel count.
    assert bool(((ct_small.spacing - 6.0).abs() <= 3.0 / counts + 1e-9).all())
    torch.testing.assert_close(ct_small.spacing * counts, extent)
    assert set(torch.unique(ct_small.labels).tolist()) <= set(torch.unique(ct.labels).tolist())


@pytest.mark.parametrize("spacing", [0.8, (2.5, 1.0, 3.0)])
def test_resample_interpolates_at_the_new_voxel_centres(spacing):
    """A HU field linear in world coordinates is reproduced exactly away from the border."""
    affine = torch.as_tensor(OBLIQUE_AFFINE)
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in (6, 8, 7)], indexing="ij"), -1)
    gradient = torch.tensor([3.0, -2.0, 5.0], dtype=F64)

    def field(points: torch.Tensor) -> torch.Tensor:
        return points @ gradient

    volume = Volume.from_tensor((field(index @ affine[:3, :3].T + affine[:3, 3])).float(), affine=affine)
    resampled = volume.resample(spacing)
    new_index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in resampled.shape], indexing="ij"), -1)
    new_world = new_index @ resampled.affine[:3, :3].T + resampled.affine[:3, 3]
    old_index = (new_world - affine[:3, 3]) @ torch.linalg.inv(affine[:3, :3]).T
    inside = ((old_index >= 0) & (old_index <= torch.tensor([5.0, 7.0, 6.0], dtype=F64))).all(-1)
    assert int(inside.sum()) > 20
    torch.testing.assert_close(resampled.hu[0][inside].double(), field(new_world)[inside], rtol=0, atol=1e-3)


def test_centered_moves_the_centre_to_the_origin():
    volume = Volume.from_tensor(torch.zeros(4, 5, 6), affine=torch.as_tensor(OBLIQUE_AFFINE))
    centred = volume.centered()
    torch.testing.assert_close(centred.center, torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(centred.affine[:3, :3], volume.affine[:3, :3])


def test_world_corners_are_the_voxel_faces():
    volume = Volume.from_tensor(torch.zeros(2, 3, 4), spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0))
    low, high = bounding_box(volume.world_corners())
    torch.testing.assert_close(low, torch.tensor([-0.5, -1.0, -1.5], dtype=F64))
    torch.testing.assert_close(high, torch.tensor([1.5, 5.0, 10.5], dtype=F64))


# --------------------------------------------------------------------------- batches


def test_volume_batch_pads_with_zeros_and_keeps_affines():
    generator = torch.Generator().manual_seed(4)
    shapes = [(4, 5, 6), (6, 3, 2), (1, 5, 1)]
    volumes = [
        Volume.from_tensor(
            torch.rand(*shape, generator=generator) * 1000 - 200,
            spacing=1.0 + index,
            origin=(index, -index, 2.0 * index),
            labels=torch.randint(1, 4, shape, generator=generator, dtype=torch.uint8),
        )
        for index, shape in enumerate(shapes)
    ]
    batch = VolumeBatch.from_volumes(volumes)
    assert batch.batch_size == 3 and batch.shape == (6, 5, 6)
    assert batch.attenuation.shape == (3, 1, 6, 5, 6) and batch.labels.shape == (3, 1, 6, 5, 6)
    for index, (volume, (d, h, w)) in enumerate(zip(volumes, shapes)):
        torch.testing.assert_close(batch.affine[index], volume.affine)
        torch.testing.assert_close(batch.attenuation[index, :, :d, :h, :w], volume.attenuation())
        torch.testing.assert_close(batch.labels[index, :, :d, :h, :w].long(), volume.labels.long())
        padding = torch.ones_like(batch.attenuation[index], dtype=torch.bool)
        padding[:, :d, :h, :w] = False
        assert bool((batch.attenuation[index][padding] == 0).all())
        assert bool((batch.labels[index][padding] == 0).all())
        torch.testing.assert_close(batch.hu[index, :, :d, :h, :w], volume.hu, rtol=0, atol=1e-2)
        selected = batch.select(index)
        torch.testing.assert_close(selected.attenuation, batch.attenuation[index : index + 1])
    # Without labels on every volume there is no label batch.
    assert VolumeBatch.from_volumes([volumes[0], Volume.from_tensor(torch.zeros(2, 2, 2))]).labels is None


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_hu_raises(bad):
    hu = torch.zeros(4, 4, 4)
    hu[1, 2, 3] = bad
    with pytest.raises(ValueError, match="hu"):
        Volume.from_tensor(hu)
    with pytest.raises(ValueError, match="hu"):
        Volume(hu=hu[None], affine=torch.eye(4, dtype=F64))


@pytest.mark.parametrize("shape", [(4, 4), (4,), (1, 1, 4, 4, 4), (2, 4, 4, 4)])
def test_wrong_hu_dimensions_raise(shape):
    with pytest.raises(ValueError, match="hu"):
        Volume.from_tensor(torch.zeros(shape))


@pytest.mark.parametrize("hu", ["ct.nii", None, object()])
def test_hu_not_numbers_raises(hu):
    with pytest.raises(TypeError, match="hu"):
        Volume.from_tensor(hu)


def test_hu_as_array_or_nested_list_is_accepted():
    from_array = Volume.from_tensor(np.full((2, 3, 4), 5, dtype=np.int16), spacing=np.int64(2))
    from_list = Volume.from_tensor([[[5.0] * 4] * 3] * 2, spacing=[2, 2, 2])
    assert from_array.hu.dtype == from_list.hu.dtype == torch.float32
    torch.testing.assert_close(from_array.hu, from_list.hu)
    torch.testing.assert_close(from_array.affine, from_list.affine)


@pytest.mark.parametrize("spacing", [0.0, -1.0, (1.0, 0.0, 1.0), (1.0, 1.0, -2.0), float("nan")])
def test_non_positive_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing"):
        Volume.from_tensor(torch.zeros(4, 4, 4), spacing=spacing)


@pytest.mark.parametrize("spacing", [0.0, (1.0, -1.0, 1.0)])
def test_non_positive_resample_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing"):
        Volume.from_tensor(torch.zeros(4, 4, 4)).resample(spacing)


def test_wrong_spacing_length_raises():
    with pytest.raises(ValueError, match="spacing"):
        Volume.from_tensor(torch.zeros(4, 4, 4), spacing=(1.0, 2.0))


@pytest.mark.parametrize("affine", [torch.eye(3), torch.eye(4)[:3], torch.eye(5)])
def test_wrong_affine_shape_raises(affine):
    with pytest.raises(ValueError, match="affine"):
        Volume.from_tensor(torch.zeros(4, 4, 4), affine=affine)
    with pytest.raises(ValueError, match="affine"):
        Volume(hu=torch.zeros(1, 4, 4, 4), affine=affine.double())


def test_singular_affine_raises():
    affine = torch.eye(4, dtype=F64)
    affine[1, 1] = 0.0
    with pytest.raises(ValueError, match="affine"):
        Volume.from_tensor(torch.zeros(4, 4, 4), affine=affine)


def test_volume_batch_wrong_affine_shape_raises():
    with pytest.raises(ValueError, match="affine"):
        VolumeBatch(attenuation=torch.zeros(2, 1, 4, 4, 4), affine=torch.eye(4, dtype=F64)[None])


def test_labels_of_another_shape_raise():
    with pytest.raises(ValueError, match="labels"):
        Volume.from_tensor(torch.zeros(4, 4, 4), labels=torch.zeros(4, 4, 3, dtype=torch.uint8))


@pytest.mark.parametrize(
    "start, stop",
    [((0, 0, 0), (5, 4, 4)), ((-1, 0, 0), (2, 2, 2)), ((2, 0, 0), (2, 4, 4)), ((3, 0, 0), (1, 4, 4))],
)
def test_crop_outside_the_volume_raises(start, stop):
    with pytest.raises(ValueError, match="start, stop"):
        Volume.from_tensor(torch.zeros(4, 4, 4)).crop(start, stop)


@pytest.mark.parametrize("center, size", [((100.0, 0.0, 0.0), 2.0), ((0.0, 0.0, 0.0), 50.0), ((0.0, 1.5, 0.0), (2.0, 2.0, 2.0))])
def test_crop_mm_outside_the_volume_raises(center, size):
    """The error names crop_mm's own arguments (center, size), not crop's."""
    volume = Volume.from_tensor(torch.zeros(4, 4, 4), spacing=1.0)  # box [-2, 2] mm on every axis
    with pytest.raises(ValueError, match="center|size"):
        volume.crop_mm(center, size)


@pytest.mark.parametrize("size", [0.0, (1.0, -1.0, 1.0)])
def test_crop_mm_non_positive_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        Volume.from_tensor(torch.zeros(4, 4, 4)).crop_mm((0.0, 0.0, 0.0), size)


def test_from_file_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        Volume.from_file(tmp_path / "missing.nii.gz")


def test_from_torchio_wrong_type_raises():
    with pytest.raises(TypeError, match="image"):
        Volume.from_torchio(torch.zeros(1, 4, 4, 4))


def test_volume_batch_from_no_volumes_raises():
    with pytest.raises(ValueError, match="volumes"):
        VolumeBatch.from_volumes([])


@pytest.mark.parametrize("mu_water", [0.0, -0.02])
def test_non_positive_mu_water_raises(mu_water):
    with pytest.raises(ValueError, match="mu_water"):
        hu_to_attenuation(torch.zeros(3), mu_water=mu_water)



def test_lean_nifti_reader_matches_torchio(tmp_path):
    import nibabel as nib
    import numpy as np
    import torchio as tio

    from onthefly.volume import _example_paths

    path, _, _ = _example_paths()
    lean = Volume.from_file(path)
    reference = tio.ScalarImage(path)
    assert lean.hu.dtype == torch.float32
    torch.testing.assert_close(lean.hu, reference.data.float(), rtol=0, atol=0)
    torch.testing.assert_close(lean.affine, torch.as_tensor(reference.affine, dtype=torch.float64))
    # Scaled float storage and an unusual affine round-trip too.
    data = (np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 5)
    affine = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    image = nib.Nifti1Image(data, affine)
    image.header.set_slope_inter(2.0, -100.0)
    nib.save(image, tmp_path / "small.nii.gz")
    small = Volume.from_file(tmp_path / "small.nii.gz")
    expected = tio.ScalarImage(tmp_path / "small.nii.gz")
    torch.testing.assert_close(small.hu, expected.data.float())
    torch.testing.assert_close(small.affine, torch.as_tensor(expected.affine, dtype=torch.float64))
