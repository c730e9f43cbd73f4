"""Patch correspondence model: backbone, attention over all views' tokens, squared-cosine head.

``images (B, V, 1, H, W)`` in ``[0, 1]`` -> predicted correspondence
``(B, V*N, V*N)`` in ``[0, 1]``, ``N = (H/k)(W/k)``, laid out as the ground
truth of :func:`onthefly.patch_correspondence` (token ``a*N + i`` is patch
``i``, row-major, of view ``a``), to be compared with it by MSE.

Pipeline (the seed paper's set-up, "Models" in the design notes):

1. backbone on every view (``B*V`` images at once), stride ``k`` = patch size;
2. 1x1 convolution to ``d_model`` channels; flatten to tokens ``(B, V*N, d)``;
3. the attention variant (:data:`ATTENTION_VARIANTS`, the paper's Table 1):

   - ``"none"``: no attention, the CNN tokens go to the head;
   - ``"superglue"``: :class:`~onthefly.models.attention.SuperGlueLayer`,
     alternating self (own view) and cross (other views) layers, 2-D RoPE;
   - ``"loftr"``: :class:`~onthefly.models.attention.LoFTRLayer`, alternating
     self and cross linear-attention layers; 2-D sine position encoding added
     to the tokens first (as LoFTR);
   - ``"standard"``: pre-norm transformer over all tokens of all views (joint
     attention), 2-D RoPE, no view embedding;
   - ``"standard_mp"``: the same layers, alternating self and cross attention;

   alternating variants start with a self layer; ``layers`` counts every layer;
4. a final LayerNorm, then the head ``(normalize(t) normalize(t)^T)^2``: squared
   cosine similarity of every pair of tokens, symmetric, ``1`` on the diagonal.

Positions are each token's patch (row, column) within its own view, so the
views are interchangeable: permuting the input views permutes the output's
blocks the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int, is_int
from .attention import (
    LoFTRLayer,
    SuperGlueLayer,
    TokenLayout,
    TransformerLayer,
    check_attention_bias,
    sine_position_encoding,
)
from .backbone import BACKBONES, check_backbone, make_backbone

__all__ = ["ATTENTION_VARIANTS", "CorrespondenceConfig", "CorrespondenceModel", "squared_cosine_similarity"]

ATTENTION_VARIANTS = ("none", "superglue", "loftr", "standard", "standard_mp")
ROTARY_VARIANTS = ("superglue", "standard", "standard_mp")


@dataclass(frozen=True)
class CorrespondenceConfig:
    """Architecture of a :class:`CorrespondenceModel` (validated on construction).

    The defaults are the seed paper's model (ResNet-50 to stride 16, d=512,
    8 heads, 8 layers, MLP 1024, joint attention with 2-D RoPE; about 26 M
    parameters). :meth:`small` gives a CPU-sized one.

    Attributes:
        backbone: one of :data:`~onthefly.models.backbone.BACKBONES`:
            ``"resnet50"`` (kornia's ResNet-50-D), ``"resnet50_torchvision"``, ``"small"``, ``"vgg"``, ``"patch"``.
        backbone_weights: optional local path of a state dict for the backbone
            (see :func:`~onthefly.models.backbone.load_backbone_weights`); never downloaded.
        patch_size: backbone stride ``k`` in pixels (16 for the ResNets; 8, 16 or 32 for ``"small"`` and ``"vgg"``).
        d_model: token channels ``d``.
        heads: attention heads; ``d_model`` divisible by it, and for the
            RoPE variants a head dimension ``d_model / heads`` even and ``>= 4``.
        layers: attention layers (0 or more; ignored by ``"none"``).
        mlp: hidden width of each layer's MLP.
        dropout: dropout probability in ``[0, 1)`` (not used by ``"loftr"``).
        attention: one of :data:`ATTENTION_VARIANTS`.
    """

    backbone: str = "resnet50"
    backbone_weights: str | os.PathLike | None = None
    patch_size: int = 16
    d_model: int = 512
    heads: int = 8
    layers: int = 8
    mlp: int = 1024
    dropout: float = 0.0
    attention: str = "standard"

    def __post_init__(self) -> None:
        check_choice("backbone", self.backbone, BACKBONES)
        check_backbone(self.backbone, self.patch_size)  # the backbone is valid here: any error names patch_size
        if self.backbone_weights is not None and not isinstance(self.backbone_weights, (str, os.PathLike)):
            raise TypeError(f"backbone_weights: expected None or a file path, got {type(self.backbone_weights).__name__}")
        check_positive_int("d_model", self.d_model)
        check_positive_int("heads", self.heads)
        check_positive_int("mlp", self.mlp)
        if not is_int(self.layers) or self.layers < 0:
            raise ValueError(f"layers: expected an int >= 0, got {self.layers!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        check_choice("attention", self.attention, ATTENTION_VARIANTS)
        if self.d_model % self.heads:
            raise ValueError(f"heads: d_model={self.d_model} must be divisible by heads={self.heads}")
        head_dim = self.d_model // self.heads
        if self.attention in ROTARY_VARIANTS and (head_dim % 2 or head_dim < 4):
            raise ValueError(
                f"heads: attention {self.attention!r} uses 2-D rotary encoding, which needs an even head dimension "
                f">= 4; d_model / heads = {self.d_model} / {self.heads} = {head_dim}"
            )
        if self.attention == "loftr" and self.d_model % 4:
            raise ValueError(f"d_model: attention 'loftr' adds a 2-D sine encoding, needs a multiple of 4, got {self.d_model}")

    @classmethod
    def small(cls, **overrides) -> CorrespondenceConfig:
        """A CPU-sized configuration: ``backbone="small"``, d=64, 4 heads, 2 layers, MLP 128 (then ``overrides``)."""
        settings = dict(backbone="small", d_model=64, heads=4, layers=2, mlp=128)
        return cls(**(settings | overrides))

    def to_dict(self) -> dict:
        """The fields as a plain dict (for checkpoints and logs)."""
        settings = asdict(self)
        if settings["backbone_weights"] is not None:
            settings["backbone_weights"] = os.fspath(settings["backbone_weights"])
        return settings


def squared_cosine_similarity(tokens: Tensor) -> Tensor:
    """Correspondence head: ``(B, L, d)`` tokens -> ``(B, L, L)`` squared cosine similarity in ``[0, 1]``.

    ``S = (normalize(t) normalize(t)^T)^2``, made exactly symmetric; the
    diagonal is 1 for every non-zero token. Computed in at least float32, also
    under autocast (bfloat16 would leave errors of about 4e-3, above the MSE
    scale of the task), so half-precision tokens give a float32 matrix.
    """
    dtype = torch.promote_types(tokens.dtype, torch.float32)
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        unit = F.normalize(tokens.to(dtype), dim=-1)
        similarity = (unit @ unit.transpose(-1, -2)).square()
        return (0.5 * (similarity + similarity.transpose(-1, -2))).clamp(max=1.0)


class CorrespondenceModel(nn.Module):
    """Predicts the patch correspondence matrix of ``V`` views of one sample.

    Args:
        config: the architecture (default :class:`CorrespondenceConfig()`, the paper's).

    Example:
        >>> model = CorrespondenceModel(CorrespondenceConfig.small(patch_size=16))
        >>> images = torch.rand(2, 3, 1, 64, 64)  # (B, V, 1, H, W)
        >>> model(images).shape  # (B, V*N, V*N), N = (64/16)^2
        torch.Size([2, 48, 48])
        >>> model.tokens(images).shape  # (B, V*N, d_model)
        torch.Size([2, 48, 64])
    """

    def __init__(self, config: CorrespondenceConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = CorrespondenceConfig()
        if not isinstance(config, CorrespondenceConfig):
            raise TypeError(f"config: expected a CorrespondenceConfig, got {type(config).__name__}")
        self.config = config
        self.backbone, channels = make_backbone(config.backbone, config.patch_size, weights=config.backbone_weights)
        self.projection = nn.Conv2d(channels, config.d_model, kernel_size=1)
        self.layers = nn.ModuleList(self._make_layers(config))
        self.norm = nn.LayerNorm(config.d_model)

    @staticmethod
    def _make_layers(config: CorrespondenceConfig) -> list[nn.Module]:
        common = dict(d_model=config.d_model, heads=config.heads, mlp=config.mlp)
        alternating = ["self" if index % 2 == 0 else "cross" for index in range(config.layers)]
        if config.attention == "none":
            return []
        if config.attention == "standard":
            return [TransformerLayer(**common, dropout=config.dropout, scope="joint") for _ in range(config.layers)]
        if config.attention == "standard_mp":
            return [TransformerLayer(**common, dropout=config.dropout, scope=scope) for scope in alternating]
        if config.attention == "superglue":
            return [SuperGlueLayer(**common, dropout=config.dropout, scope=scope) for scope in alternating]
        return [LoFTRLayer(**common, scope=scope) for scope in alternating]

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (all, or those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_images(self, images: Tensor) -> tuple[int, int, int, int]:
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise TypeError(f"images: expected a float tensor (B, V, 1, H, W), got {type(images).__name__}")
        if images.dim() != 5 or images.shape[2] != 1:
            raise ValueError(f"images: expected shape (B, V, 1, H, W), got {tuple(images.shape)}")
        batch, views, _, height, width = images.shape
        if batch < 1 or views < 1:
            raise ValueError(f"images: expected at least one sample and one view, got shape {tuple(images.shape)}")
        k = self.config.patch_size
        if height < k or width < k or height % k or width % k:
            raise ValueError(f"images: height and width must be positive multiples of patch_size={k}, got {height} x {width}")
        return batch, views, height, width

    def tokens(self, images: Tensor, bias: Tensor | None = None) -> Tensor:
        """Output tokens before the head.

        Args:
            images: ``(B, V, 1, H, W)`` in ``[0, 1]``, ``H, W`` multiples of ``patch_size``.
            bias: optional float tensor broadcastable to ``(B, heads, V*N, V*N)``,
                added to the attention logits of every layer, or a list of
                such tensors (or ``None``), one per layer (ignored by
                ``"none"``; ``ValueError`` for ``"loftr"``).

        Returns:
            ``(B, V*N, d_model)``, token ``a*N + r*(W/k) + c`` for patch ``(r, c)`` of view ``a``.
        """
        batch, views, height, width = self._check_images(images)
        k = self.config.patch_size
        rows, cols = height // k, width // k
        length = views * rows * cols
        if isinstance(bias, (list, tuple)):
            if len(bias) != len(self.layers):
                raise ValueError(f"bias: expected one bias per attention layer ({len(self.layers)}), got {len(bias)}")
            biases = list(bias)
        else:
            biases = [bias] * len(self.layers)
        for item in biases:
            check_attention_bias(item, batch, self.config.heads, length)
        if any(item is not None for item in biases) and self.config.attention == "loftr":
            raise ValueError("bias: attention 'loftr' uses linear attention, which has no logits to add a bias to")
        features = self.projection(self.backbone(rearrange(images, "batch views 1 h w -> (batch views) 1 h w")))
        if features.shape[-2:] != (rows, cols):
            raise RuntimeError(f"backbone returned a {tuple(features.shape[-2:])} grid, expected {(rows, cols)}")
        tokens = rearrange(features, "(batch views) width rows cols -> batch (views rows cols) width", batch=batch)
        if self.config.attention != "none":
            layout = TokenLayout.grid(views, rows, cols, device=images.device)
            if self.config.attention == "loftr":
                tokens = tokens + sine_position_encoding(layout.rows, layout.cols, self.config.d_model).to(tokens.dtype)
            for layer, layer_bias in zip(self.layers, biases):
                tokens = layer(tokens, layout, bias=layer_bias)
        return self.norm(tokens)

    def forward(self, images: Tensor, bias: Tensor | None = None) -> Tensor:
        """Predicted correspondence ``(B, V*N, V*N)`` in ``[0, 1]``, symmetric, 1 on the diagonal.

        ``images (B, V, 1, H, W)`` and ``bias`` as in :meth:`tokens`.
        """
        return squared_cosine_similarity(self.tokens(images, bias=bias))
