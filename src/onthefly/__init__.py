"""onthefly: multi-view X-ray training data rendered inside the training loop.

Data flow: volume -> geometry -> projector (-> display) -> correspondence -> (augment, fractures) ->
sampling (config -> store -> draw -> make -> stream) -> models -> training.
"""

from .augment import Augmentation, AugmentationParams
from .correspondence import (
    CoarseWeights,
    WeightIntegral,
    correspondence_map,
    epipolar_line,
    patch_correspondence,
    patch_permutation,
    permute_views_patches,
    pixel_ray,
    pool_weights,
    voxel_weights,
)
from .distributions import CardinalAngles, PerView, Uniform
from .fractures import (
    FractureConfig,
    FractureParams,
    FractureResult,
    apply_fractures,
    bone_label_lookup,
    bone_weight_table,
    bone_weights,
    draw_fractures,
    fracture_visibility,
)
from .deformation import AnatomyVariation
from .display import DISPLAYS, Display
from .geometry import CArm, camera_to_world, patch_index, project_points, relative_camera_pose, rotation_matrix
from .losses import ProjectionLoss
from .phantoms import phantom
from .physics import Physics
from .preview import save_batch_preview, save_correspondence_preview, save_views
from .projector import beer_lambert, render, to_display
from .sampling import (
    DRRBatch,
    PhantomSource,
    DRRCorrespondenceSampler,
    Prefetcher,
    SampleParams,
    SamplerConfig,
    VolumeBank,
    make_batch,
    prepare,
)
from .tasks import AngularSequenceSampler, BiplanarSampler, NovelViewSampler
from .volume import (
    MU_WATER_PER_MM,
    Volume,
    VolumeBatch,
    attenuation_to_hu,
    example_volume,
    hu_to_attenuation,
)

__version__ = "0.1.0"

__all__ = [
    "Augmentation",
    "AugmentationParams",
    "CArm",
    "CardinalAngles",
    "DRRBatch",
    "DRRCorrespondenceSampler",
    "PhantomSource",
    "AnatomyVariation",
    "phantom",
    "Physics",
    "Prefetcher",
    "VolumeBank",
    "prepare",
    "SampleParams",
    "SamplerConfig",
    "make_batch",
    "camera_to_world",
    "patch_index",
    "relative_camera_pose",
    "AngularSequenceSampler",
    "BiplanarSampler",
    "NovelViewSampler",
    "ProjectionLoss",
    "PerView",
    "FractureConfig",
    "FractureParams",
    "FractureResult",
    "Uniform",
    "CoarseWeights",
    "WeightIntegral",
    "MU_WATER_PER_MM",
    "Volume",
    "VolumeBatch",
    "attenuation_to_hu",
    "apply_fractures",
    "bone_label_lookup",
    "bone_weight_table",
    "bone_weights",
    "draw_fractures",
    "fracture_visibility",
    "beer_lambert",
    "correspondence_map",
    "epipolar_line",
    "patch_correspondence",
    "patch_permutation",
    "permute_views_patches",
    "pixel_ray",
    "pool_weights",
    "voxel_weights",
    "example_volume",
    "hu_to_attenuation",
    "project_points",
    "render",
    "save_batch_preview",
    "save_correspondence_preview",
    "save_views",
    "rotation_matrix",
    "to_display",
    "Display",
    "DISPLAYS",
]
