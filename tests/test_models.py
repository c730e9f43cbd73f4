"""Correspondence models: config checks, backbones, attention scopes, RoPE, bias, head properties, view symmetry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from onthefly.models import (
    ATTENTION_VARIANTS,
    CorrespondenceConfig,
    CorrespondenceModel,
    LoFTRLayer,
    MultiHeadAttention,
    RotaryEmbedding2D,
    SuperGlueLayer,
    TokenLayout,
    TransformerLayer,
    make_backbone,
    sine_position_encoding,
    squared_cosine_similarity,
)

# 32 x 32 images, 8-pixel patches: N = 16 tokens per view
TINY = dict(backbone="small", patch_size=8, d_model=32, heads=4, layers=2, mlp=64)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny models: one intra-op thread is faster than two on a shared machine."""


def tiny_model(attention: str, **changes) -> CorrespondenceModel:
    torch.manual_seed(0)
    return CorrespondenceModel(CorrespondenceConfig(**(TINY | dict(attention=attention) | changes)))


def tiny_images(batch: int = 2, views: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, views, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(d_model=30, heads=4), "heads"),
        (dict(d_model=12, heads=4), "heads"),  # head dimension 3: odd, no RoPE pairs
        (dict(d_model=8, heads=4), "heads"),  # head dimension 2: no room for rows and columns
        (dict(heads=0), "heads"),
        (dict(d_model=0), "d_model"),
        (dict(mlp=0), "mlp"),
        (dict(layers=-1), "layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(attention="transformer"), "attention"),
        (dict(backbone="vgg16"), "backbone"),
        (dict(backbone="resnet50", patch_size=8), "patch_size"),
        (dict(patch_size=4), "patch_size"),
        (dict(patch_size=12), "patch_size"),
        (dict(attention="loftr", d_model=30, heads=3), "d_model"),  # sine encoding needs d % 4 == 0
        (dict(backbone_weights=3), "backbone_weights"),
    ],
)
def test_config_rejects(changes, field):
    with pytest.raises((ValueError, TypeError), match=rf"^{field}:"):
        CorrespondenceConfig(**(TINY | changes))


def test_config_defaults_and_small():
    default = CorrespondenceConfig()
    assert (default.backbone, default.patch_size, default.d_model, default.heads, default.layers, default.mlp) == (
        "resnet50", 16, 512, 8, 8, 1024
    )
    assert default.attention == "standard"
    small = CorrespondenceConfig.small(attention="loftr")
    assert (small.backbone, small.d_model, small.heads, small.layers, small.mlp, small.attention) == (
        "small", 64, 4, 2, 128, "loftr"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        small.d_model = 8
    assert CorrespondenceConfig(**small.to_dict()) == small
    # head dimension 6 is even: rows get two pairs, columns one
    CorrespondenceConfig(**(TINY | dict(d_model=24, heads=4)))


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize(("patch_size", "channels"), [(8, 128), (16, 256), (32, 256)])
def test_small_backbone_shape(patch_size, channels):
    backbone, out_channels = make_backbone("small", patch_size)
    assert out_channels == channels
    features = backbone(torch.rand(3, 1, 64, 96))
    assert features.shape == (3, channels, 64 // patch_size, 96 // patch_size)


@pytest.mark.parametrize(("patch_size", "channels"), [(8, 128), (16, 128), (32, 128)])
def test_vgg_backbone_shape_and_eval_independence(patch_size, channels):
    backbone, out_channels = make_backbone("vgg", patch_size)
    assert out_channels == channels
    images = torch.rand(3, 1, 64, 96)
    assert backbone(images).shape == (3, channels, 64 // patch_size, 96 // patch_size)  # training mode
    backbone.eval()
    with torch.no_grad():
        alone = backbone(images[1:2])
        together = backbone(images)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)  # running statistics: a batch = a loop


def test_vgg_backbone_sees_a_single_pixel_at_full_resolution():
    """A pixel reaches the features of its own patch, and none beyond the receptive field (gradients)."""
    torch.manual_seed(0)
    backbone, _ = make_backbone("vgg", 16)
    backbone.eval()
    images = torch.rand(1, 1, 192, 192, requires_grad=True)
    features = backbone(images)  # (1, 128, 12, 12)
    own, = torch.autograd.grad(features[0, :, 1, 2].sum(), images, retain_graph=True)
    far, = torch.autograd.grad(features[0, :, 11, 11].sum(), images)
    assert own[0, 0, 20, 40] != 0  # pixel (20, 40) lies in patch (1, 2)
    assert far[0, 0, :60, :80].abs().amax() == 0  # over 100 pixels from patch (11, 11)
    assert far[0, 0, 176:, 176:].abs().amax() > 0


def test_resnet50_backbone_shape():
    backbone, channels = make_backbone("resnet50", 16)
    assert channels == 1024
    assert not any(name.startswith("res_layers.3.") for name in backbone.state_dict())  # stride-32 stage dropped
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.rand(2, 1, 64, 64))
    assert features.shape == (2, 1024, 4, 4)
    assert torch.isfinite(features).all()


def test_resnet50_torchvision_backbone_or_clear_error():
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(ImportError, match="torchvision"):
            make_backbone("resnet50_torchvision", 16)
        return
    backbone, channels = make_backbone("resnet50_torchvision", 16)
    assert channels == 1024
    assert backbone.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1024, 4, 4)


@pytest.mark.parametrize(
    ("name", "patch_size", "argument"),
    [("vgg16", 16, "name"), ("small", 4, "patch_size"), ("small", 64, "patch_size"), ("vgg", 4, "patch_size"),
     ("resnet50", 32, "patch_size")],
)
def test_make_backbone_rejects(name, patch_size, argument):
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        make_backbone(name, patch_size)


def test_backbone_weights_round_trip(tmp_path):
    torch.manual_seed(3)
    source, _ = make_backbone("small", 8)
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    loaded, _ = make_backbone("small", 8, weights=path)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded(images), source(images))
    # and through the model's config, as a str path
    model = CorrespondenceModel(CorrespondenceConfig(**(TINY | dict(backbone_weights=str(path)))))
    torch.testing.assert_close(model.backbone(images), source(images))


def test_resnet50_loads_full_resnetd_state_dict(tmp_path):
    from kornia.models.rt_detr.architecture.resnet_d import ResNetD

    full = ResNetD.from_config(50)
    path = tmp_path / "resnet50d.pt"
    torch.save(full.state_dict(), path)  # includes res_layers.3.*, which the truncated backbone skips
    backbone, _ = make_backbone("resnet50", 16, weights=path)
    state = backbone.state_dict()
    for name in ("conv1.conv1_1.conv.weight", "res_layers.2.blocks.5.convs.branch2c.conv.weight"):
        torch.testing.assert_close(state[name], full.state_dict()[name], rtol=0, atol=0)


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        make_backbone("small", 8, weights=tmp_path / "missing.pt")
    stride8, _ = make_backbone("small", 8)
    path = tmp_path / "small8.pt"
    torch.save(stride8.state_dict(), path)
    with pytest.raises(ValueError, match="^weights:.*missing"):
        make_backbone("small", 16, weights=path)  # one block more than the file has
    state = stride8.state_dict()
    state["blocks.0.0.weight"] = torch.zeros(32, 1, 5, 5)
    torch.save(state, path)
    with pytest.raises(ValueError, match="^weights:.*wrong shape"):
        make_backbone("small", 8, weights=path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="^weights:.*state dict"):
        make_backbone("small", 8, weights=path)


# ---------------------------------------------------------------- token layout and position encodings


def test_convention_token_layout():
    layout = TokenLayout.grid(3, 2, 4)  # 3 views of 2 x 4 patches, N = 8
    index = torch.arange(24)
    torch.testing.assert_close(layout.views, index // 8)
    torch.testing.assert_close(layout.rows, ((index % 8) // 4).float())
    torch.testing.assert_close(layout.cols, (index % 4).float())
    self_mask, cross_mask = layout.mask("self"), layout.mask("cross")
    assert layout.mask("joint") is None
    assert self_mask[0, 7] and not self_mask[0, 8] and cross_mask[0, 8] and not cross_mask[9, 15]
    torch.testing.assert_close(self_mask, ~cross_mask)


def test_convention_model_token_order():
    """Token ``a*N + r*(W/k) + c`` of the model is patch ``(r, c)`` of view ``a``."""
    model = tiny_model("none", d_model=8, heads=2)
    # a backbone whose feature (r, c) sees exactly patch (r, c): mean of the patch, to 128 channels
    model.backbone = nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(1, 128, 1))
    images = tiny_images(batch=1, views=3, size=64)  # 8 x 8 patches, N = 64
    changed = images.clone()
    changed[0, 1, 0, 40:48, 16:24] += 5.0  # view 1, patch row 5, column 2
    with torch.no_grad():
        difference = (model.tokens(changed) - model.tokens(images)).abs().amax(-1)[0]
    assert torch.nonzero(difference > 1e-6).flatten().tolist() == [1 * 64 + 5 * 8 + 2]


def test_convention_rope_rows_then_columns():
    rope = RotaryEmbedding2D(8)  # pairs 0-1 rotate with the row, pairs 2-3 with the column
    x = torch.randn(5, 8)
    rows_only = rope.apply(x, torch.arange(5), torch.zeros(5))
    cols_only = rope.apply(x, torch.zeros(5), torch.arange(5))
    torch.testing.assert_close(rows_only[:, 4:], x[:, 4:])
    torch.testing.assert_close(cols_only[:, :4], x[:, :4])
    assert not torch.allclose(rows_only[1:, :4], x[1:, :4])
    # pair j of a group turns by position * 10000^(-j / P); pair 0 by the position itself
    angle = torch.tensor(3.0)
    turned = rope.apply(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]]), torch.tensor([3.0]), torch.tensor([0.0]))
    torch.testing.assert_close(turned[0, :2], torch.stack([angle.cos(), angle.sin()]))


@pytest.mark.parametrize("head_dim", [4, 6, 16])
def test_rope_depends_only_on_position_differences(head_dim):
    generator = torch.Generator().manual_seed(0)
    rope = RotaryEmbedding2D(head_dim)
    queries, keys = torch.randn(2, 12, head_dim, generator=generator)
    rows = torch.randint(0, 16, (12,), generator=generator)
    cols = torch.randint(0, 16, (12,), generator=generator)
    scores = rope.apply(queries, rows, cols) @ rope.apply(keys, rows, cols).T
    shifted = rope.apply(queries, rows + 7, cols - 3) @ rope.apply(keys, rows + 7, cols - 3).T
    torch.testing.assert_close(shifted, scores, atol=1e-4, rtol=1e-4)
    # rotations: norms kept, and the scores do depend on the relative positions
    torch.testing.assert_close(rope.apply(queries, rows, cols).norm(dim=-1), queries.norm(dim=-1))
    assert not torch.allclose(scores, queries @ keys.T, atol=1e-3)
    # moving one token changes its row only
    moved = rope.apply(queries, torch.cat([rows[:1] + 1, rows[1:]]), cols) @ rope.apply(keys, rows, cols).T
    assert not torch.allclose(moved[0], scores[0], atol=1e-4)
    torch.testing.assert_close(moved[1:], scores[1:])


def test_rope_rejects():
    for head_dim in (2, 5):
        with pytest.raises(ValueError, match="^head_dim:"):
            RotaryEmbedding2D(head_dim)
    with pytest.raises(ValueError, match="^x:"):
        RotaryEmbedding2D(8).apply(torch.randn(3, 6), torch.arange(3), torch.arange(3))


def test_sine_position_encoding():
    encoding = sine_position_encoding(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0]), 8)
    assert encoding.shape == (2, 8)
    torch.testing.assert_close(encoding[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1]))
    one, two = torch.tensor(1.0), torch.tensor(2.0)
    torch.testing.assert_close(encoding[1, :4], torch.stack([one.sin(), one.cos(), two.sin(), two.cos()]))
    with pytest.raises(ValueError, match="^channels:"):
        sine_position_encoding(torch.zeros(1), torch.zeros(1), 6)


# ---------------------------------------------------------------- attention layers


def make_layer(kind: str, scope: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        return TransformerLayer(d_model=16, heads=2, mlp=32, scope=scope)
    if kind == "superglue":
        return SuperGlueLayer(d_model=16, heads=2, mlp=32, scope=scope)
    return LoFTRLayer(d_model=16, heads=2, mlp=32, scope=scope)


def changed_outputs(layer: nn.Module, layout: TokenLayout, tokens: torch.Tensor) -> torch.Tensor:
    """``(L,)`` whether each output token moves when only ``tokens`` (indices) of the input change."""
    x = torch.randn(1, layout.length, 16, generator=torch.Generator().manual_seed(2))
    changed = x.clone()
    changed[:, tokens] += torch.randn(len(tokens), 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (layer(changed, layout) - layer(x, layout)).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize("kind", ["transformer", "superglue", "loftr"])
def test_self_scope_sees_only_its_own_view(kind):
    layout = TokenLayout.grid(3, 2, 2)  # N = 4
    moved = changed_outputs(make_layer(kind, "self"), layout, torch.arange(4, 8))  # all of view 1
    assert moved.tolist() == [False] * 4 + [True] * 4 + [False] * 4


@pytest.mark.parametrize("kind", ["transformer", "superglue", "loftr"])
def test_cross_scope_sees_only_other_views(kind):
    layout = TokenLayout.grid(3, 2, 2)
    moved = changed_outputs(make_layer(kind, "cross"), layout, torch.tensor([1]))  # token 1 of view 0
    # token 1 itself (residual, query) and every token of the other views; not tokens 0, 2, 3 of view 0
    assert moved.tolist() == [False, True, False, False] + [True] * 8


def test_joint_scope_sees_every_view():
    layout = TokenLayout.grid(3, 2, 2)
    assert changed_outputs(make_layer("transformer", "joint"), layout, torch.tensor([1])).all()


@pytest.mark.parametrize("scope", ["self", "cross", "joint"])
def test_loftr_linear_attention_matches_dense(scope):
    layout = TokenLayout.grid(3, 2, 3)
    layer = make_layer("loftr", scope)
    generator = torch.Generator().manual_seed(5)
    queries, keys, values = torch.randn(3, 2, layout.length, 2, 8, generator=generator, dtype=torch.float64)
    mask = layout.mask(scope)
    allowed = torch.ones(layout.length, layout.length, dtype=torch.bool) if mask is None else mask
    # dense: weights phi(q).phi(k) over the allowed keys, normalised per query
    weights = torch.einsum("blhe,bshe->bhls", nn.functional.elu(queries) + 1, nn.functional.elu(keys) + 1) * allowed
    expected = torch.einsum("bhls,bshe->blhe", weights, values) / (weights.sum(-1).transpose(1, 2)[..., None] + 1e-6)
    torch.testing.assert_close(layer.linear_attention(queries, keys, values, layout), expected)


def test_loftr_cross_matches_kornia_pairwise_linear_attention():
    from kornia.feature.loftr.loftr_module.linear_attention import LinearAttention

    layout = TokenLayout.grid(2, 2, 3)  # N = 6
    queries, keys, values = torch.randn(3, 2, 12, 2, 8, generator=torch.Generator().manual_seed(6))
    ours = make_layer("loftr", "cross").linear_attention(queries, keys, values, layout)
    theirs_view0 = LinearAttention()(queries[:, :6], keys[:, 6:], values[:, 6:])
    theirs_view1 = LinearAttention()(queries[:, 6:], keys[:, :6], values[:, :6])
    torch.testing.assert_close(ours, torch.cat([theirs_view0, theirs_view1], dim=1), atol=1e-5, rtol=1e-5)


def test_attention_bias_selects_one_key():
    """A bias of -1e9 on every key but ``j`` makes every query return ``j``'s value path."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(d_model=16, heads=2)
    layout = TokenLayout.grid(2, 2, 2)
    x = torch.randn(1, 8, 16)
    bias = torch.full((8, 8), -1e9)
    bias[:, 5] = 0.0
    with torch.no_grad():
        output = attention(x, layout, bias=bias)
        value = attention.qkv(x).chunk(3, dim=-1)[2][:, 5]
        expected = attention.out(value).expand(1, 8, 16)
    torch.testing.assert_close(output, expected)


def test_attention_bias_zero_large_and_masked():
    layout = TokenLayout.grid(2, 2, 2)
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(7))
    layer = make_layer("transformer", "cross")
    with torch.no_grad():
        plain = layer(x, layout)
        torch.testing.assert_close(layer(x, layout, bias=torch.zeros(2, 1, 8, 8)), plain)
        large = torch.randn(8, 8, generator=torch.Generator().manual_seed(8)) * 20
        assert not torch.allclose(layer(x, layout, bias=large), plain, atol=1e-3)
        # a bias on keys outside the scope (same view, for a cross layer) changes nothing: they stay masked
        same_view = layout.mask("self").float() * 1e4
        torch.testing.assert_close(layer(x, layout, bias=same_view), plain)


def test_attention_bias_rejects_shapes():
    layer, layout = make_layer("transformer", "joint"), TokenLayout.grid(2, 2, 2)
    x = torch.randn(2, 8, 16)
    for bias in (torch.zeros(7, 7), torch.zeros(3, 2, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(1, 1, 1, 8, 8)):
        with pytest.raises(ValueError, match="^bias:"):
            layer(x, layout, bias=bias)
    with pytest.raises(TypeError, match="^bias:"):
        layer(x, layout, bias=torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="^bias:"):
        make_layer("loftr", "self")(x, layout, bias=torch.zeros(8, 8))


# ---------------------------------------------------------------- the model


def test_squared_cosine_similarity():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    expected = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 1.0]]])
    torch.testing.assert_close(squared_cosine_similarity(tokens), expected)


def test_squared_cosine_similarity_in_float32_under_autocast():
    tokens = torch.randn(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        similarity = squared_cosine_similarity(tokens.bfloat16())
    assert similarity.dtype == torch.float32
    torch.testing.assert_close(similarity, squared_cosine_similarity(tokens.bfloat16().float()))


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_model_output_properties(attention):
    model = tiny_model(attention).eval()
    with torch.no_grad():
        output = model(tiny_images())
        tokens = model.tokens(tiny_images())
    assert output.shape == (2, 32, 32)
    assert tokens.shape == (2, 32, 32)  # (B, V*N, d_model), d_model = 32
    torch.testing.assert_close(output, output.transpose(1, 2), rtol=0, atol=0)
    assert output.min() >= 0.0 and output.max() <= 1.0
    torch.testing.assert_close(output.diagonal(dim1=1, dim2=2), torch.ones(2, 32))


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_model_gradients_reach_the_backbone(attention):
    model = tiny_model(attention).train()
    target = torch.rand(2, 32, 32)
    loss = nn.functional.mse_loss(model(tiny_images()), 0.5 * (target + target.transpose(1, 2)))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    first_conv = model.backbone.blocks[0][0].weight.grad
    assert first_conv.abs().sum() > 0


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_model_equivariant_to_view_permutation(attention):
    model = tiny_model(attention).eval()
    images = tiny_images(batch=2, views=3)
    permutation = torch.tensor([2, 0, 1])
    with torch.no_grad():
        output = model(images)
        permuted = model(images[:, permutation])
    index = (permutation[:, None] * 16 + torch.arange(16)).flatten()  # tokens of view perm[a] at block a
    torch.testing.assert_close(permuted, output[:, index][:, :, index], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["standard", "loftr"])
def test_model_batch_equals_loop(attention):
    model = tiny_model(attention).eval()
    images = tiny_images(batch=3)
    with torch.no_grad():
        batched = model(images)
        looped = torch.cat([model(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_model_single_view(attention):
    model = tiny_model(attention).eval()
    with torch.no_grad():
        output = model(tiny_images(views=1))
    assert output.shape == (2, 16, 16)
    assert torch.isfinite(output).all()


def test_model_bias():
    model = tiny_model("standard").eval()
    images = tiny_images()
    with torch.no_grad():
        plain = model.tokens(images)
        torch.testing.assert_close(model.tokens(images, bias=torch.zeros(32, 32)), plain)
        guided = model(images, bias=10.0 * torch.eye(32).expand(2, 1, 32, 32))
        assert not torch.allclose(guided, model(images), atol=1e-3)
    with pytest.raises(ValueError, match="^bias:"):
        model(images, bias=torch.zeros(16, 16))
    with pytest.raises(ValueError, match="^bias:"):
        tiny_model("loftr")(images, bias=torch.zeros(32, 32))
    with torch.no_grad():  # "none" has no attention: the bias is ignored
        none = tiny_model("none").eval()
        torch.testing.assert_close(none(images, bias=torch.randn(32, 32)), none(images))


@pytest.mark.parametrize(
    "images",
    [
        torch.rand(2, 1, 32, 32),  # no view axis
        torch.rand(2, 2, 3, 32, 32),  # three channels
        torch.rand(2, 0, 1, 32, 32),  # no view
        torch.rand(2, 2, 1, 36, 32),  # height not a multiple of 8
        torch.rand(2, 2, 1, 4, 8),  # smaller than a patch
    ],
)
def test_model_rejects_images(images):
    with pytest.raises(ValueError, match="^images:"):
        tiny_model("none")(images)


def test_model_rejects_integer_images_and_bad_config():
    with pytest.raises(TypeError, match="^images:"):
        tiny_model("none")(torch.zeros(1, 2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="^config:"):
        CorrespondenceModel(TINY)


def test_model_dropout_only_while_training():
    model = tiny_model("standard", dropout=0.5)
    images = tiny_images()
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(images), model(images))
        model.eval()
        torch.testing.assert_close(model(images), model(images))


def test_num_parameters():
    model = tiny_model("standard")
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.backbone.requires_grad_(False)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - backbone


def test_model_apply_reaches_every_module():
    """``nn.Module.apply(fn)`` (weight initialisers) works: no submodule shadows it."""
    model = tiny_model("standard")
    seen = []
    model.apply(seen.append)
    assert model in seen and model.backbone in seen and all(layer in seen for layer in model.layers)


def test_default_config_is_the_paper_model():
    """ResNet-50 to stride 16, d = 512, 8 layers: about 26 M parameters (the paper quotes 24 M)."""
    torch.manual_seed(0)
    model = CorrespondenceModel().eval()
    assert 24e6 < model.num_parameters() < 28e6
    with torch.no_grad():
        output = model(torch.rand(1, 2, 1, 64, 64))  # 4 x 4 tokens per view
    assert output.shape == (1, 32, 32)
    assert torch.isfinite(output).all()
