"""Correspondence models: backbones, attention layers over multi-view patch tokens, the correspondence head.

``CorrespondenceModel(config)(images (B, V, 1, H, W)) -> (B, V*N, V*N)``, the
predicted patch correspondence, laid out like :func:`onthefly.patch_correspondence`.
"""

from .attention import (
    ATTENTION_SCOPES,
    LoFTRLayer,
    MultiHeadAttention,
    RotaryEmbedding2D,
    SuperGlueLayer,
    TokenLayout,
    TransformerLayer,
    sine_position_encoding,
)
from .backbone import BACKBONES, load_backbone_weights, make_backbone
from .classifier import FUSIONS, ClassifierConfig, ClassifierOutput, FractureClassifier
from .correspondence import ATTENTION_VARIANTS, CorrespondenceConfig, CorrespondenceModel, squared_cosine_similarity

__all__ = [
    "ATTENTION_SCOPES",
    "ATTENTION_VARIANTS",
    "BACKBONES",
    "ClassifierConfig",
    "ClassifierOutput",
    "FUSIONS",
    "FractureClassifier",
    "CorrespondenceConfig",
    "CorrespondenceModel",
    "LoFTRLayer",
    "MultiHeadAttention",
    "RotaryEmbedding2D",
    "SuperGlueLayer",
    "TokenLayout",
    "TransformerLayer",
    "load_backbone_weights",
    "make_backbone",
    "sine_position_encoding",
    "squared_cosine_similarity",
]
