"""onthefly: multi-view X-ray training data rendered inside the training loop.

Data flow: volume -> geometry -> projector (-> display) -> correspondence -> (augment, fractures) ->
sampling (config -> store -> draw -> make -> stream) -> models -> training.

The top level holds what a user composes with: the sampler and its configuration, the task samplers and
the pieces they are built from, volumes, the C-arm, rendering and the correspondence matrix, phantoms,
physics, anatomical variation, fractures, augmentation, displays, the models' configurations and the
training configuration. Everything else stays importable from its module
(``from onthefly.correspondence import pool_weights``, ``from onthefly.fractures import draw_fractures``).
"""

from .augment import Augmentation
from .correspondence import correspondence_map, patch_correspondence
from .deformation import AnatomyVariation
from .display import DISPLAYS, Display
from .distributions import CardinalAngles, Distribution, PerView, Uniform
from .fractures import FractureConfig
from .geometry import CArm, project_points
from .losses import ProjectionLoss
from .models import ClassifierConfig, CorrespondenceConfig, CorrespondenceModel, FractureClassifier
from .phantoms import phantom
from .physics import Physics
from .preview import save_batch_preview, save_views
from .projector import render, to_display
from .sampling import (
    DRRBatch,
    DRRCorrespondenceSampler,
    PhantomSource,
    Prefetcher,
    SampleParams,
    SamplerConfig,
    TargetBuilder,
    ViewLayout,
    VolumeBank,
    make_batch,
    prepare,
)
from .tasks import AngularSequenceSampler, BiplanarSampler, NovelViewSampler
from .train import TrainConfig
from .volume import MU_WATER_PER_MM, Volume, VolumeBatch, example_volume, hu_to_attenuation

__version__ = "0.1.0"

__all__ = [
    # the sampler, its configuration, its parameters and batches, and where its CTs come from
    "DRRCorrespondenceSampler",
    "SamplerConfig",
    "SampleParams",
    "DRRBatch",
    "make_batch",
    "Prefetcher",
    "VolumeBank",
    "prepare",
    "PhantomSource",
    "phantom",
    # task samplers and the pieces they are composed of
    "BiplanarSampler",
    "AngularSequenceSampler",
    "NovelViewSampler",
    "ViewLayout",
    "TargetBuilder",
    # parameter ranges
    "Distribution",
    "Uniform",
    "PerView",
    "CardinalAngles",
    # volumes
    "Volume",
    "VolumeBatch",
    "example_volume",
    "hu_to_attenuation",
    "MU_WATER_PER_MM",
    # the C-arm, rendering, displays and the correspondence matrix
    "CArm",
    "project_points",
    "render",
    "to_display",
    "Display",
    "DISPLAYS",
    "patch_correspondence",
    "correspondence_map",
    # what acts on a sample: physics, anatomical variation, fractures, augmentation
    "Physics",
    "AnatomyVariation",
    "FractureConfig",
    "Augmentation",
    # models, losses and training
    "CorrespondenceConfig",
    "CorrespondenceModel",
    "ClassifierConfig",
    "FractureClassifier",
    "ProjectionLoss",
    "TrainConfig",
    # pictures
    "save_batch_preview",
    "save_views",
]
