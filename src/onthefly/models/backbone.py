"""Convolutional backbones: one single-channel X-ray in, a stride-``k`` feature map out.

Every backbone maps ``(B', 1, H, W)`` images in ``[0, 1]`` (dense is bright) to
``(B', C, H/k, W/k)`` features, where ``k`` is the patch size, so feature
``(r, c)`` is the token of patch ``(r, c)``.

Backbones (``make_backbone(name, patch_size)``):

- ``"resnet50"``: kornia's pure-torch ResNet-50-D
  (:class:`kornia.models.rt_detr.architecture.resnet_d.ResNetD`) truncated after
  its stride-16 stage, ``C = 1024``, ``k = 16`` only. The full network returns
  ``[res3, res4, res5]`` (strides 8, 16, 32; 512, 1024, 2048 channels); the
  stride-32 stage is dropped here (15.0 M of its 23.5 M parameters). The
  parameter names are kornia's (``conv1.*``, ``res_layers.{0,1,2}.*``), so a
  state dict of the full ResNetD loads (its ``res_layers.3.*`` entries are
  skipped by name). The same architecture on every machine: torchvision is
  never substituted silently.
- ``"resnet50_torchvision"``: torchvision's ResNet-50 (ResNet-B) truncated after
  ``layer3``, ``C = 1024``, ``k = 16`` only. Imported when built, for
  torchvision's ImageNet weights (a local file); parameter names are
  torchvision's, ``layer4.*`` and ``fc.*`` of a full state dict are skipped.
- ``"small"``: a small CNN for quick CPU runs, ``log2(k)`` blocks of
  [3x3 conv stride 2, GroupNorm, GELU, 3x3 conv, GroupNorm, GELU] with
  ``32, 64, 128, 256, 256`` channels, ``k`` in ``{8, 16, 32}``;
  ``C = 128`` for ``k = 8`` and ``256`` for ``k = 16, 32``.
- ``"vgg"``: a plain VGG-style CNN that keeps full resolution first: two
  [3x3 conv, BatchNorm, ReLU] at ``16`` channels, then ``log2(k)`` times a 2x2
  max-pool and two more with ``32, 64, 128, 128, 128`` channels, ``k`` in
  ``{8, 16, 32}``, ``C = 128``. Made for finding small local changes (fractures):
  on the classifier's control task (`examples/classifier_control.py`) it learns
  an 8 x 8-pixel square of contrast 0.1 where ``"small"`` does not.
  BatchNorm couples the images of a training batch; in ``eval()`` mode each
  image is independent.

The ResNets replicate the channel to RGB and normalise with the ImageNet mean
and standard deviation. Weights are only ever read from a local file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int

__all__ = ["BACKBONES", "make_backbone", "load_backbone_weights", "SmallCNN", "VGGCNN", "ResNet50Stride16",
           "PatchEmbedding"]

BACKBONES = ("resnet50", "resnet50_torchvision", "small", "vgg", "patch")
PATCH_CHANNELS = 384
SMALL_PATCH_SIZES = (8, 16, 32)
SMALL_CHANNELS = (32, 64, 128, 256, 256)
VGG_CHANNELS = (16, 32, 64, 128, 128, 128)  # full resolution, then after each max-pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_backbone(name: str, patch_size: int) -> None:
    """Raise ``ValueError`` naming ``name`` or ``patch_size`` when the pair is not supported."""
    check_choice("name", name, BACKBONES)
    check_positive_int("patch_size", patch_size)
    if name in ("small", "vgg") and patch_size not in SMALL_PATCH_SIZES:
        raise ValueError(f"patch_size: backbone {name!r} supports {list(SMALL_PATCH_SIZES)}, got {patch_size}")
    if name.startswith("resnet50") and patch_size != 16:
        raise ValueError(f"patch_size: backbone {name!r} has stride 16 only, got {patch_size}")


class PatchEmbedding(nn.Module):
    """ViT-style patch embedding: one linear map per ``k x k`` patch, ``(B', 1, H, W)`` -> ``(B', 384, H/k, W/k)``.

    The trunk of the ViT-S-like classifier (a stride-``k`` convolution with a
    ``k x k`` kernel; inputs are centred on 0.5 first).

    Example:
        >>> PatchEmbedding(16)(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 384, 4, 4])
    """

    skipped_prefixes: tuple[str, ...] = ()

    def __init__(self, patch_size: int, channels: int = PATCH_CHANNELS) -> None:
        super().__init__()
        self.out_channels = channels
        self.embed = nn.Conv2d(1, channels, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images - 0.5)


class GrayscaleToImageNet(nn.Module):
    """``(B', 1, H, W)`` in ``[0, 1]`` -> ``(B', 3, H, W)`` replicated and ImageNet-normalised."""

    def __init__(self) -> None:
        super().__init__()
        # not persistent: they are constants, and state dicts keep the names of the source network
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class ResNet50Stride16(nn.Module):
    """kornia's ResNet-50-D up to its stride-16 stage: ``(B', 1, H, W)`` -> ``(B', 1024, H/16, W/16)``.

    Parameter names match :class:`~kornia.models.rt_detr.architecture.resnet_d.ResNetD`
    (``conv1.*``, ``res_layers.0-2.*``).

    Example:
        >>> ResNet50Stride16()(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1024, 4, 4])
    """

    out_channels = 1024
    stride = 16
    skipped_prefixes = ("res_layers.3.",)

    def __init__(self) -> None:
        super().__init__()
        from kornia.models.rt_detr.architecture.resnet_d import ResNetD

        network = ResNetD.from_config(50)
        self.input = GrayscaleToImageNet()
        self.conv1 = network.conv1  # stride 4, 64 channels
        self.res_layers = nn.ModuleList(list(network.res_layers)[:3])  # strides 4, 8, 16

    def forward(self, images: Tensor) -> Tensor:
        features = self.conv1(self.input(images))
        for stage in self.res_layers:
            features = stage(features)
        return features


class TorchvisionResNet50Stride16(nn.Module):
    """torchvision's ResNet-50 up to ``layer3``: ``(B', 1, H, W)`` -> ``(B', 1024, H/16, W/16)``.

    Parameter names match ``torchvision.models.resnet50`` (``conv1``, ``bn1``,
    ``layer1-3``). Needs a working torchvision.
    """

    out_channels = 1024
    stride = 16
    skipped_prefixes = ("layer4.", "fc.")

    def __init__(self) -> None:
        super().__init__()
        try:
            from torchvision.models import resnet50
        except Exception as error:  # a torchvision built for another torch fails with RuntimeError/OSError too
            raise ImportError(
                f"backbone 'resnet50_torchvision' needs torchvision, which failed to import ({error!r}); "
                "use backbone 'resnet50' (kornia's ResNet-50-D) instead"
            ) from error
        network = resnet50(weights=None)
        self.input = GrayscaleToImageNet()
        self.conv1, self.bn1, self.relu, self.maxpool = network.conv1, network.bn1, network.relu, network.maxpool
        self.layer1, self.layer2, self.layer3 = network.layer1, network.layer2, network.layer3

    def forward(self, images: Tensor) -> Tensor:
        features = self.maxpool(self.relu(self.bn1(self.conv1(self.input(images)))))
        return self.layer3(self.layer2(self.layer1(features)))


class SmallCNN(nn.Module):
    """A small CNN of stride ``patch_size``: ``(B', 1, H, W)`` -> ``(B', C, H/k, W/k)``.

    ``log2(k)`` blocks, each [3x3 conv stride 2, GroupNorm(8), GELU, 3x3 conv,
    GroupNorm(8), GELU], with ``32, 64, 128, 256, 256`` channels, so ``C = 128``
    for ``k = 8`` and ``C = 256`` for ``k = 16`` or ``32``. GroupNorm keeps every
    image independent of the rest of its batch.

    Example:
        >>> SmallCNN(patch_size=8)(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 128, 8, 8])
    """

    skipped_prefixes: tuple[str, ...] = ()

    def __init__(self, *, patch_size: int = 16) -> None:
        super().__init__()
        check_backbone("small", patch_size)
        self.stride = patch_size
        blocks = []
        in_channels = 1
        for out_channels in SMALL_CHANNELS[: int(math.log2(patch_size))]:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                    nn.GroupNorm(8, out_channels),
                    nn.GELU(),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    nn.GroupNorm(8, out_channels),
                    nn.GELU(),
                )
            )
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(images - 0.5)


class VGGCNN(nn.Module):
    """A plain VGG-style CNN of stride ``patch_size``: ``(B', 1, H, W)`` -> ``(B', C, H/k, W/k)``.

    Two [3x3 conv, BatchNorm, ReLU] at full resolution with 16 channels, then
    ``log2(k)`` stages of [2x2 max-pool, two such convolutions] with ``32, 64,
    128, 128, 128`` channels (``C = 128``). Small changes of a few pixels
    reach the features before any striding. BatchNorm uses the training
    batch's statistics in ``train()`` mode and its running ones in ``eval()``.

    Example:
        >>> VGGCNN(patch_size=16).eval()(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 128, 4, 4])
    """

    skipped_prefixes: tuple[str, ...] = ()

    def __init__(self, *, patch_size: int = 16) -> None:
        super().__init__()
        check_backbone("vgg", patch_size)
        self.stride = patch_size
        channels = VGG_CHANNELS[: int(math.log2(patch_size)) + 1]
        layers: list[nn.Module] = []
        in_channels = 1
        for stage, out_channels in enumerate(channels):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                           nn.ReLU(inplace=True)]
                in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images - 0.5)


def load_backbone_weights(
    module: nn.Module, weights: str | os.PathLike, *, skipped_prefixes: Sequence[str] = ()
) -> nn.Module:
    """Load a state dict saved with ``torch.save`` from the local file ``weights`` into ``module``.

    Entries whose names start with one of ``skipped_prefixes`` (the stages a
    truncated backbone drops) are skipped; every other name must match exactly,
    in both directions, with the same shapes, or ``ValueError`` lists the
    differences. A missing file raises ``FileNotFoundError``. Nothing is downloaded.
    """
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no such file {path!r} (a local state dict saved with torch.save)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        raise ValueError(f"weights: {path!r} does not hold a state dict (a mapping from names to tensors)")
    state = {name: value for name, value in state.items() if not name.startswith(tuple(skipped_prefixes))}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(name for name in set(state) & set(expected) if state[name].shape != expected[name].shape)
    if missing or unexpected or mismatched:
        details = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if names:
                details.append(f"{len(names)} {label} (e.g. {names[:3]})")
        raise ValueError(f"weights: {path!r} does not match the backbone's parameters: " + "; ".join(details))
    module.load_state_dict(state, strict=True)
    return module


def make_backbone(name: str, patch_size: int, weights: str | os.PathLike | None = None) -> tuple[nn.Module, int]:
    """Build backbone ``name`` of stride ``patch_size``, optionally loading local ``weights``.

    Args:
        name: one of :data:`BACKBONES`.
        patch_size: stride ``k`` of the output (16 for the ResNets; 8, 16 or 32 for ``"small"``;
            any for ``"patch"``, the ViT-style linear patch embedding; 8, 16 or 32 for ``"vgg"``).
        weights: optional path of a state dict file (see :func:`load_backbone_weights`).

    Returns:
        ``(module, C)``: ``module`` maps ``(B', 1, H, W)`` images in ``[0, 1]`` to
        ``(B', C, H/k, W/k)`` features (``H, W`` divisible by ``k``).

    Example:
        >>> backbone, channels = make_backbone("small", 16)
        >>> channels, backbone(torch.rand(2, 1, 64, 64)).shape
        (256, torch.Size([2, 256, 4, 4]))
    """
    check_backbone(name, patch_size)
    if name == "resnet50":
        module: nn.Module = ResNet50Stride16()
    elif name == "resnet50_torchvision":
        module = TorchvisionResNet50Stride16()
    elif name == "patch":
        module = PatchEmbedding(patch_size)
    elif name == "vgg":
        module = VGGCNN(patch_size=patch_size)
    else:
        module = SmallCNN(patch_size=patch_size)
    if weights is not None:
        load_backbone_weights(module, weights, skipped_prefixes=module.skipped_prefixes)
    return module, module.out_channels
