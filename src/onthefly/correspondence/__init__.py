"""Patch-level many-to-many correspondence matrices between views.

Definition (the README's "The correspondence matrix"): for an ``H x W`` view and
patch size ``k`` there are ``N = (H/k)(W/k)`` patches, row-major; tokens of all
views are concatenated view-major, token ``a*N + i`` is patch ``i`` of view ``a``.

1. Weight every voxel: 0 for air (``HU <= air_threshold_hu``, default -900),
   else ``sigmoid(0.005 (HU + 150))`` (``weighting="soft"``) or 1 (``"binary"``).
2. Average-pool the weights onto a coarse grid; the default coarse voxel edge
   is one patch back-projected to the isocenter, ``k dx sid / sdd``, the
   smallest over the sample's views.
3. Footprint ``p_a^v[i]`` of coarse voxel ``v`` in view ``a``: the integral
   over patch ``i`` of the length (mm) of the rays inside the voxel's box,
   normalised so that ``max_i p_a^v[i] = 1``. Exact by default (closed form,
   :mod:`onthefly.footprints`); ``footprint="separable"`` approximates it by
   the product of its exact row and column marginals (about half the time);
   ``rays_per_patch=m`` samples ``m x m`` rays per patch instead (an
   approximation).
4. ``C[a*N+i, b*N+j] = max_v w_v p_a^v[i] p_b^v[j]`` for all view pairs.

The cameras are the rendering cameras (:class:`~onthefly.geometry.CArm`).

Computation: a coarse voxel's shadow covers a few patches per view, so each
voxel keeps the ``K x K`` window of patches around its shadow (``K`` is a
host integer that bounds every shadow, :func:`~onthefly.footprints.footprint_window`),
and the outer products of its entries for every view pair are scattered into
``C`` with ``scatter_reduce(..., "amax")``, batched over samples, views and
voxels. Not differentiable (runs under ``torch.no_grad``).

Host reads and static shapes: the eager path drops air voxels first (one
host read of their count). Under ``torch.compile`` (``compile=True``, or a
caller's compiled function) every coarse voxel is processed (air voxels add
zeros), so sizes depend only on shapes and on ``window``; with ``window``
given (and the pooled weights from :meth:`WeightIntegral.pool` with
``grid_shape``), the call reads nothing back from the device and traces
without graph breaks.

One job per module:

* :mod:`~onthefly.correspondence.weights`: voxel weights (step 1), coarse grids, :class:`CoarseWeights`;
* :mod:`~onthefly.correspondence.pooling`: pooling onto coarse grids (step 2): :func:`pool_weights`,
  :class:`WeightIntegral`, :func:`pool_crop_weights`;
* :mod:`~onthefly.correspondence.matrix`: :func:`patch_correspondence` (steps 3-4);
* :mod:`~onthefly.correspondence.inspection`: :func:`correspondence_map`, :func:`pixel_ray`, :func:`epipolar_line`;
* :mod:`~onthefly.correspondence.permutations`: flips and rotations of the images as permutations of patches.
"""

from .inspection import correspondence_map, epipolar_line, pixel_ray
from .matrix import (
    DEFAULT_MEMORY_BUDGET,
    DEVICE_MEMORY_BUDGET,
    default_memory_budget,
    default_rays_per_patch,
    patch_correspondence,
)
from .permutations import IMAGE_OPERATIONS, patch_permutation, permute_views_patches
from .pooling import WeightIntegral, pool_crop_weights, pool_weights
from .weights import WEIGHTINGS, CoarseWeights, coarse_boundaries, coarse_grid_affine, coarse_voxel_size, voxel_weights

__all__ = [
    "patch_correspondence",
    "pool_weights",
    "CoarseWeights",
    "WeightIntegral",
    "coarse_grid_affine",
    "coarse_boundaries",
    "coarse_voxel_size",
    "voxel_weights",
    "correspondence_map",
    "epipolar_line",
    "pixel_ray",
    "patch_permutation",
    "permute_views_patches",
    "default_rays_per_patch",
    "default_memory_budget",
    "DEFAULT_MEMORY_BUDGET",
    "DEVICE_MEMORY_BUDGET",
    "pool_crop_weights",
    "WEIGHTINGS",
    "IMAGE_OPERATIONS",
]
