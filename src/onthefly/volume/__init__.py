"""CT volumes: Hounsfield units on a voxel grid placed in the world by an affine.

Conventions (pinned by ``tests/test_volume.py::test_convention_*``):

* ``Volume.hu`` has shape ``(1, D, H, W)``; voxel ``[0, i, j, k]`` has its centre
  at ``affine @ (i, j, k, 1)`` in world millimetres. The world frame is RAS+
  as NIfTI and torchio give it: +x towards the patient's right, +y anterior,
  +z superior. The affine is the torchio / nibabel voxel-to-world matrix.
* Attenuation for rendering: ``mu = mu_water * (1 + HU / 1000)`` clamped at 0, in
  1/mm. ``MU_WATER_PER_MM = 0.02`` is water near 65 keV effective energy (NIST
  XCOM: 0.0206 /mm at 60 keV, 0.0193 /mm at 70 keV).

One job per module:

* :mod:`~onthefly.volume.hounsfield`: the HU <-> attenuation conversions and their ranges;
* :mod:`~onthefly.volume.affines`: the checks of voxel-to-world matrices and the crop affine;
* :mod:`~onthefly.volume.ct`: :class:`Volume`, one CT;
* :mod:`~onthefly.volume.batch`: :class:`VolumeBatch`, attenuation volumes ready to render;
* :mod:`~onthefly.volume.files`: reading CT files safely (NIfTI, other images, DICOM series);
* :mod:`~onthefly.volume.example`: :func:`example_volume`, the bundled chest CT;
* :mod:`~onthefly.volume.targets`: volumes as a task's target (window, cube).
"""

from .affines import crop_affine
from .batch import VolumeBatch, as_volume_batch
from .ct import Volume
from .example import example_volume
from .files import MAX_VOXELS
from .hounsfield import (
    MU_WATER_PER_MM,
    MU_WATER_RANGE,
    attenuation_of_hu,
    attenuation_to_hu,
    check_mu_water,
    hu_to_attenuation,
    hu_to_attenuation_,
)
from .targets import TARGET_ATTENUATION_SCALE, TARGET_HU_WINDOW, resample_to_cube, window_attenuation

__all__ = [
    "MU_WATER_PER_MM",
    "MU_WATER_RANGE",
    "MAX_VOXELS",
    "Volume",
    "VolumeBatch",
    "as_volume_batch",
    "example_volume",
    "hu_to_attenuation",
    "hu_to_attenuation_",
    "attenuation_of_hu",
    "attenuation_to_hu",
    "check_mu_water",
    "crop_affine",
    "resample_to_cube",
    "window_attenuation",
    "TARGET_HU_WINDOW",
    "TARGET_ATTENUATION_SCALE",
]
