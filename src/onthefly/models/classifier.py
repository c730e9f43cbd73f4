"""Multi-view fracture classifier: a ViT-S-like trunk over patch tokens, three fusion modes, attention guidance.

The trunk is the correspondence model's token trunk (:class:`CorrespondenceModel`
with ``attention="standard"``: patch embedding or CNN backbone, 1x1
projection, joint-attention transformer with 2-D RoPE, final LayerNorm), so a
trunk pre-trained on the correspondence task loads as it is
(:meth:`FractureClassifier.load_trunk`). On top, two heads:

* the study head: one logit per sample (fracture vs none), a linear map of the
  mean-pooled tokens (``pooling="mean"``, the ViT's), or of the largest patch
  logit (``pooling="max"``: the study is fractured where some patch is);
* the patch head: one logit per patch of every view it sees (a linear map of
  each token), trained to find the fracture's patch (``batch.fracture_patch``)
  and shown as a heat map.

A CNN backbone: ``ClassifierConfig.cnn()`` (the VGG-style CNN to stride 16,
``backbone="vgg"``, then the heads; ``layers`` transformer layers on top, 0 for
none). It keeps full resolution in its first layers: on the control task of
``examples/classifier_control.py`` (an 8 x 8-pixel square raised by 0.1 on
DRRs, held-out anatomy) it reaches 100 % in 300 steps, where the same
classifier on the ``"small"`` CNN stays at chance after 1,200.

Fusion of ``V`` views:

* ``"single"``: view 0 only;
* ``"late"``: each view through the trunk alone, per-view logits averaged;
* ``"early"``: the tokens of all views in one sequence (joint attention).

Attention guidance (early fusion): every layer ``l`` adds ``alpha_l * C`` to
its attention logits, ``A' = QK^T / sqrt(d) + alpha_l C``, with ``C`` the
``(B, V*N, V*N)`` patch correspondence (the truth during simulated training,
a correspondence model's prediction at inference) and ``alpha_l`` learnable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .._checks import check_choice, check_positive_int, is_int
from .correspondence import CorrespondenceConfig, CorrespondenceModel

__all__ = ["FUSIONS", "POOLINGS", "ClassifierConfig", "ClassifierOutput", "FractureClassifier"]

FUSIONS = ("single", "late", "early")
POOLINGS = ("mean", "max")


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`FractureClassifier`.

    Attributes:
        backbone: token embedding: ``"patch"`` (ViT-style linear patch embedding,
            the default), ``"small"`` (small CNN), ``"vgg"`` (VGG-style CNN) or ``"resnet50"``.
        backbone_weights: optional local state-dict file for the backbone.
        patch_size: patch edge ``k`` in pixels.
        d_model, heads, layers, mlp, dropout: the transformer (ViT-S: 384, 6, 12, 1536).
        fusion: ``"single"``, ``"late"`` or ``"early"``.
        attention_guidance: add ``alpha_l * C`` to every layer's attention logits
            (needs ``fusion="early"``; the forward pass then needs ``C``).
        alpha_init: initial ``alpha_l``.
        pooling: the study logit from the mean-pooled tokens (``"mean"``) or from
            the largest patch logit (``"max"``, a learned scale and offset of it).
    """

    backbone: str = "patch"
    backbone_weights: str | os.PathLike | None = None
    patch_size: int = 16
    d_model: int = 384
    heads: int = 6
    layers: int = 12
    mlp: int = 1536
    dropout: float = 0.0
    fusion: str = "early"
    attention_guidance: bool = False
    alpha_init: float = 1.0
    pooling: str = "mean"

    def __post_init__(self) -> None:
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        if is_int(self.layers) and self.layers == 0:
            if self.attention_guidance:
                raise ValueError("attention_guidance: needs attention layers (layers >= 1), got layers=0")
        else:
            check_positive_int("layers", self.layers)
        if self.attention_guidance and self.fusion != "early":
            raise ValueError(f"attention_guidance: needs fusion='early' (tokens of all views attend together), "
                             f"got fusion={self.fusion!r}")
        self.trunk_config()  # validates the shared fields, naming them

    @classmethod
    def small(cls, **overrides) -> "ClassifierConfig":
        """A CPU-sized configuration: d 64, 4 heads, 2 layers, MLP 128 (then ``overrides``)."""
        return cls(**(dict(d_model=64, heads=4, layers=2, mlp=128) | overrides))

    @classmethod
    def cnn(cls, **overrides) -> "ClassifierConfig":
        """A CNN classifier: the VGG-style CNN backbone to stride 16, d 128, no transformer layer (then
        ``overrides``; ``layers >= 1`` puts joint attention on top, as early fusion wants)."""
        return cls(**(dict(backbone="vgg", d_model=128, heads=4, layers=0, mlp=256) | overrides))

    def trunk_config(self) -> CorrespondenceConfig:
        """The correspondence-model configuration whose token trunk this classifier uses."""
        return CorrespondenceConfig(
            backbone=self.backbone, backbone_weights=self.backbone_weights, patch_size=self.patch_size,
            d_model=self.d_model, heads=self.heads, layers=self.layers, mlp=self.mlp, dropout=self.dropout,
            attention="standard",
        )

    def to_dict(self) -> dict:
        settings = asdict(self)
        if settings["backbone_weights"] is not None:
            settings["backbone_weights"] = os.fspath(settings["backbone_weights"])
        return settings


@dataclass
class ClassifierOutput:
    """What :meth:`FractureClassifier.predict` returns.

    Attributes:
        logits: ``(B,)`` study logits (fracture vs none).
        patch_logits: ``(B, V', N)`` one logit per patch (row-major over the
            ``H/k x W/k`` grid) of each view the model sees: ``V' = 1`` (view 0)
            for ``"single"`` fusion, ``V`` otherwise.
    """

    logits: Tensor
    patch_logits: Tensor


class FractureClassifier(nn.Module):
    """One fracture logit per multi-view sample, and one per patch.

    Example:
        >>> model = FractureClassifier(ClassifierConfig.small(fusion="late"))
        >>> model(torch.rand(2, 3, 1, 64, 64)).shape  # (B, V, 1, H, W) -> (B,)
        torch.Size([2])
        >>> model.predict(torch.rand(2, 3, 1, 64, 64)).patch_logits.shape  # (B, V, N), N = (64/16)^2
        torch.Size([2, 3, 16])
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        config = ClassifierConfig() if config is None else config
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"config: expected a ClassifierConfig, got {type(config).__name__}")
        self.config = config
        self.trunk = CorrespondenceModel(config.trunk_config())
        self.head = nn.Linear(config.d_model if config.pooling == "mean" else 1, 1)
        if config.pooling == "max":  # the study logit starts as the largest patch logit
            nn.init.ones_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.patch_head = nn.Linear(config.d_model, 1)
        self.alpha = nn.Parameter(torch.full((config.layers,), float(config.alpha_init))) if config.attention_guidance else None

    def load_trunk(self, source: str | os.PathLike | dict) -> None:
        """Load a correspondence-trained trunk: a checkpoint path of
        :func:`onthefly.train.train_correspondence` (read with its checksum and
        ``weights_only=True``, :func:`onthefly.checkpoint.load_checkpoint`), a file
        holding a CorrespondenceModel state dict, or such a dict.

        A checkpoint's model configuration must match :meth:`ClassifierConfig.trunk_config`
        (``ValueError`` lists the fields that differ, saved vs expected).
        """
        from ..checkpoint import load_checkpoint

        state = source
        if not isinstance(source, dict):
            if not isinstance(source, (str, os.PathLike)):
                raise TypeError(f"source: expected a checkpoint path or a state dict, got {type(source).__name__}")
            state = load_checkpoint(source, name="source")
        if "model" in state and isinstance(state["model"], dict):
            self._check_trunk_config(state.get("model_config"))
            state = state["model"]
        missing, unexpected = self.trunk.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"source: state dict does not fit the trunk; missing {list(missing)[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")

    def _check_trunk_config(self, saved: dict | None) -> None:
        if saved is None:
            return
        expected = self.config.trunk_config().to_dict()
        different = {key: (saved.get(key), value) for key, value in expected.items()
                     if key != "backbone_weights" and saved.get(key) != value}
        if different:
            fields = ", ".join(f"{key}={old!r}" for key, (old, _) in different.items() if key != "attention")
            listed = "; ".join(f"{key}: {old!r} vs {new!r}" for key, (old, new) in different.items())
            advice = (f" Build the ClassifierConfig with {fields} (on the command line, leave the trunk flags out "
                      "to take them from --init-from)" if fields else "")
            raise ValueError(f"source: the checkpoint's model differs from this trunk (saved vs expected): {listed}."
                             f"{advice}{' The trunk needs attention=standard.' if 'attention' in different else ''}")

    def forward(self, images: Tensor, correspondence: Tensor | None = None, *,
                patches: bool = False) -> Tensor | ClassifierOutput:
        """Study logits ``(B,)`` of ``images (B, V, 1, H, W)`` in ``[0, 1]``; with ``patches``, a
        :class:`ClassifierOutput` (as :meth:`predict`, through ``forward`` for wrappers such as DDP)."""
        output = self.predict(images, correspondence)
        return output if patches else output.logits

    def predict(self, images: Tensor, correspondence: Tensor | None = None) -> ClassifierOutput:
        """Study and patch logits of ``images (B, V, 1, H, W)`` in ``[0, 1]``.

        ``correspondence (B, V*N, V*N)`` is needed with attention guidance (and ignored otherwise).
        """
        if images.dim() != 5:
            raise ValueError(f"images: expected shape (B, V, 1, H, W), got {tuple(images.shape)}")
        batch, views = images.shape[:2]
        fusion = self.config.fusion
        if fusion == "single":
            return self._heads(self.trunk.tokens(images[:, :1]), 1)
        if fusion == "late":
            tokens = self.trunk.tokens(images.reshape(batch * views, 1, *images.shape[2:]))
            output = self._heads(tokens, 1)
            return ClassifierOutput(logits=output.logits.view(batch, views).mean(1),
                                    patch_logits=output.patch_logits.view(batch, views, -1))
        bias = None
        if self.alpha is not None:
            if correspondence is None:
                raise ValueError("correspondence: attention guidance needs C (B, V*N, V*N), got None")
            if correspondence.dim() != 3 or correspondence.shape[0] != batch:
                raise ValueError(f"correspondence: expected (B, V*N, V*N) with B = {batch}, got {tuple(correspondence.shape)}")
            c = correspondence.to(images.dtype)[:, None]  # (B, 1, L, L): the same bias for every head
            bias = [alpha * c for alpha in self.alpha]
        return self._heads(self.trunk.tokens(images, bias=bias), views)

    def _heads(self, tokens: Tensor, views: int) -> ClassifierOutput:
        """Both heads on ``tokens (B', views * N, d)``."""
        patch_logits = self.patch_head(tokens)[..., 0].view(tokens.shape[0], views, -1)
        if self.config.pooling == "max":  # an affine map of the largest patch logit
            logits = self.head(patch_logits.flatten(1).amax(1, keepdim=True))[:, 0]
        else:
            logits = self.head(tokens.mean(1))[:, 0]
        return ClassifierOutput(logits=logits, patch_logits=patch_logits)
