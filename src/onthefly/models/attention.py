"""Attention layers over the patch tokens of several views.

Tokens: ``x`` is ``(B, L, d)`` with ``L = V*N`` tokens of ``V`` views of ``N``
patches each, view-major and row-major within a view (token ``a*N + i`` is
patch ``i`` of view ``a``). A :class:`TokenLayout` holds each token's view and
its patch (row, column) within that view, and from the view ids the three
attention scopes:

- ``"joint"``: every token attends to every token (no mask);
- ``"self"``: a token attends to the tokens of its own view;
- ``"cross"``: a token attends to the tokens of all *other* views. With a single
  view there is nothing to attend to: the attended values are zero.

Layers (all map ``(B, L, d)`` to ``(B, L, d)``):

- :class:`TransformerLayer`: pre-norm transformer layer, softmax attention
  with 2-D rotary position encoding (:class:`RotaryEmbedding2D`), any scope.
- :class:`SuperGlueLayer`: attentional message passing as in SuperGlue,
  ``x + MLP([x, message])``, softmax attention, ``"self"`` or ``"cross"``. The
  positions enter through 2-D RoPE on queries and keys (as LightGlue does)
  rather than SuperGlue's keypoint encoder; the MLP's hidden normalisation is a
  LayerNorm instead of a BatchNorm, so no sample depends on its batch.
- :class:`LoFTRLayer`: LoFTR's encoder layer (linear attention with the feature
  map ``elu(x) + 1``, merge, norm, MLP on ``[x, message]``, norm, residual),
  written here for ``V >= 2`` views: ``"self"`` sums keys and values over the
  query's own view, ``"cross"`` over all other views (kornia's
  ``LocalFeatureTransformer`` handles one pair of views). Positions are not
  used inside; add :func:`sine_position_encoding` to the tokens first, as LoFTR does.

Softmax attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`
with the scope as a boolean mask. Each softmax layer takes an optional additive
``bias`` broadcastable to ``(B, heads, L, L)`` (float; added to the logits
``QK^T / sqrt(head_dim)``, for instance ``alpha * C`` for attention guidance);
entries outside the scope stay masked whatever the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int

__all__ = [
    "ATTENTION_SCOPES",
    "TokenLayout",
    "RotaryEmbedding2D",
    "sine_position_encoding",
    "MultiHeadAttention",
    "TransformerLayer",
    "SuperGlueLayer",
    "LoFTRLayer",
    "check_attention_bias",
]

ATTENTION_SCOPES = ("joint", "self", "cross")


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """Where each of the ``L`` tokens comes from.

    Attributes:
        views: ``(L,)`` int64 view index of each token.
        rows: ``(L,)`` float patch row of each token within its view.
        cols: ``(L,)`` float patch column of each token within its view.
        num_views: ``V``, the number of views.
    """

    views: Tensor
    rows: Tensor
    cols: Tensor
    num_views: int

    @classmethod
    def grid(cls, num_views: int, rows: int, cols: int, *, device: torch.device | str | None = None) -> TokenLayout:
        """Layout of ``num_views`` views of ``rows x cols`` patches, view-major then row-major.

        Token ``a*N + r*cols + c`` (``N = rows*cols``) is patch ``(r, c)`` of view ``a``.

        Example:
            >>> layout = TokenLayout.grid(2, 2, 3)
            >>> layout.views.tolist(), layout.rows.tolist()[:6], layout.cols.tolist()[:6]
            ([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
        """
        check_positive_int("num_views", num_views)
        check_positive_int("rows", rows)
        check_positive_int("cols", cols)
        patches = rows * cols
        index = torch.arange(num_views * patches, device=device)
        patch = index % patches
        return cls(
            views=index // patches,
            rows=(patch // cols).float(),
            cols=(patch % cols).float(),
            num_views=num_views,
        )

    @property
    def length(self) -> int:
        """``L``, the number of tokens."""
        return self.views.shape[0]

    def mask(self, scope: str) -> Tensor | None:
        """``(L, L)`` boolean, True where query (row) may attend to key (column); None for ``"joint"``."""
        check_choice("scope", scope, ATTENTION_SCOPES)
        if scope == "joint":
            return None
        same_view = self.views[:, None] == self.views[None, :]
        return same_view if scope == "self" else ~same_view


class RotaryEmbedding2D:
    """2-D rotary position encoding (RoPE) of a head dimension ``head_dim``.

    The ``head_dim / 2`` consecutive channel pairs ``(2j, 2j+1)`` are rotated
    by angles: the first ``ceil(head_dim / 4)`` pairs by ``row * f`` and the
    others by ``col * f``, each group with the standard rotary frequencies
    ``f_j = base^(-j / P)``, ``j = 0..P-1`` (``P`` pairs in the group). So
    when ``head_dim`` is a multiple of 4, half of it encodes the patch row and
    half the patch column. Rotations keep norms, and ``apply(q, p) . apply(k, p')``
    depends only on ``q``, ``k`` and the position difference ``p - p'``.

    No parameters, hence a plain object rather than an ``nn.Module`` (whose own
    ``apply(fn)`` this class's :meth:`apply` would shadow); the frequencies are
    made on the device of the positions.

    Args:
        head_dim: even, at least 4.
        base: frequency base (10000).

    Example:
        >>> rope = RotaryEmbedding2D(8)
        >>> rope.apply(torch.randn(2, 4, 5, 8), torch.arange(5), torch.zeros(5)).shape
        torch.Size([2, 4, 5, 8])
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        check_positive_int("head_dim", head_dim)
        if head_dim % 2 or head_dim < 4:
            raise ValueError(f"head_dim: 2-D rotary encoding needs an even head dimension >= 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        pairs = head_dim // 2
        self.row_pairs, self.col_pairs = pairs - pairs // 2, pairs // 2

    def __repr__(self) -> str:
        return f"RotaryEmbedding2D(head_dim={self.head_dim}, base={self.base:g})"

    def _frequencies(self, pairs: int, device: torch.device) -> Tensor:
        return self.base ** (-torch.arange(pairs, dtype=torch.float32, device=device) / pairs)

    def angles(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``(L, head_dim / 2)`` rotation angle (radians) of each channel pair, from ``(L,)`` rows and columns."""
        rows, cols = torch.as_tensor(rows).float(), torch.as_tensor(cols).float()
        if rows.dim() != 1 or rows.shape != cols.shape:
            raise ValueError(f"rows, cols: expected two (L,) tensors, got {tuple(rows.shape)} and {tuple(cols.shape)}")
        return torch.cat(
            [
                rows[:, None] * self._frequencies(self.row_pairs, rows.device),
                cols[:, None] * self._frequencies(self.col_pairs, cols.device),
            ],
            dim=-1,
        )

    def apply(self, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Rotate queries or keys ``x`` of shape ``(..., L, head_dim)`` by the positions ``rows, cols`` ``(L,)``."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x: expected last dimension head_dim={self.head_dim}, got shape {tuple(x.shape)}")
        angles = self.angles(rows, cols)
        if x.dim() < 2 or x.shape[-2] != angles.shape[0]:
            raise ValueError(f"x: expected {angles.shape[0]} tokens (the positions given), got shape {tuple(x.shape)}")
        return rotate_pairs(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))

    __call__ = apply


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs ``(2j, 2j+1)`` of ``x (..., L, 2P)`` by the angles whose ``(L, P)`` cos and sin are given."""
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def sine_position_encoding(rows: Tensor, cols: Tensor, channels: int, *, base: float = 10000.0) -> Tensor:
    """Absolute 2-D sinusoidal position encoding, ``(L, channels)``, of patch positions ``rows, cols`` ``(L,)``.

    As LoFTR's: ``channels / 4`` frequencies ``f_j = base^(-2j / (channels/2))``,
    channels ``4j .. 4j+3`` = ``sin(col f_j), cos(col f_j), sin(row f_j), cos(row f_j)``.
    ``channels`` must be a multiple of 4.
    """
    check_positive_int("channels", channels)
    if channels % 4:
        raise ValueError(f"channels: sine position encoding needs a multiple of 4, got {channels}")
    rows, cols = rows.float(), cols.float()
    frequencies = base ** (-2.0 * torch.arange(channels // 4, device=rows.device, dtype=torch.float32) / (channels // 2))
    col_angles, row_angles = cols[:, None] * frequencies, rows[:, None] * frequencies
    encoding = torch.stack([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=-1)
    return encoding.flatten(-2)


def check_attention_bias(bias: Tensor | None, batch: int, heads: int, length: int) -> None:
    """Raise unless ``bias`` is None or a float tensor broadcastable to ``(batch, heads, length, length)``."""
    if bias is None:
        return
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        raise TypeError(f"bias: expected a float tensor, got {type(bias).__name__} {getattr(bias, 'dtype', '')}")
    target = (batch, heads, length, length)
    try:
        shape = torch.broadcast_shapes(bias.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(f"bias: expected a shape broadcastable to (B, heads, L, L) = {target}, got {tuple(bias.shape)}")


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, L, h*e)`` -> ``(B, h, L, e)``."""
    return rearrange(x, "batch tokens (heads width) -> batch heads tokens width", heads=heads)


def _merge_heads(x: Tensor) -> Tensor:
    """``(B, h, L, e)`` -> ``(B, L, h*e)``."""
    return rearrange(x, "batch heads tokens width -> batch tokens (heads width)")


class MultiHeadAttention(nn.Module):
    """Multi-head softmax attention within a scope, with optional 2-D RoPE and additive bias.

    ``(B, L, d)`` -> ``(B, L, d)``: ``out(softmax(QK^T / sqrt(e) + bias + mask) V)``
    with ``Q, K, V`` linear maps of the input split into ``heads`` heads of
    ``e = d / heads`` channels, RoPE applied to ``Q`` and ``K``, and the scope's
    mask (:meth:`TokenLayout.mask`) as ``-inf`` outside it.

    Args:
        d_model: token channels ``d``.
        heads: number of heads; ``d`` must divide by it.
        dropout: attention dropout probability while training.
        rotary: apply :class:`RotaryEmbedding2D` to queries and keys.
    """

    def __init__(self, *, d_model: int, heads: int, dropout: float = 0.0, rotary: bool = True) -> None:
        super().__init__()
        _check_heads(d_model, heads)
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding2D(d_model // heads) if rotary else None

    def forward(self, x: Tensor, layout: TokenLayout, *, scope: str = "joint", bias: Tensor | None = None) -> Tensor:
        """``x (B, L, d)`` -> ``(B, L, d)``; ``bias`` broadcastable to ``(B, heads, L, L)``."""
        _check_tokens(x, layout)
        check_attention_bias(bias, x.shape[0], self.heads, x.shape[1])
        if scope == "cross" and layout.num_views == 1:  # no other view: the attended values are zero
            return self.out(torch.zeros_like(x))
        queries, keys, values = (_split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if self.rotary is not None:
            angles = self.rotary.angles(layout.rows, layout.cols)
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            queries, keys = rotate_pairs(queries, cos, sin), rotate_pairs(keys, cos, sin)
        mask = attention_mask(layout, scope, bias, x.dtype)
        dropout = self.dropout if self.training else 0.0
        message = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
        return self.out(_merge_heads(message))


def attention_mask(layout: TokenLayout, scope: str, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The ``attn_mask`` for SDPA: the scope's boolean mask, or ``bias`` with ``-inf`` outside the scope."""
    allowed = layout.mask(scope)
    if bias is None:
        return allowed
    bias = bias.to(dtype)
    if allowed is None:
        return bias
    return torch.where(allowed, bias, float("-inf"))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + attn(norm(x))``, then ``x + MLP(norm(x))``.

    ``(B, L, d)`` -> ``(B, L, d)``. Attention: :class:`MultiHeadAttention` in
    ``scope`` (``"joint"``, ``"self"`` or ``"cross"``), with 2-D RoPE unless
    ``rotary=False``. MLP: ``Linear(d, mlp)``, GELU, ``Linear(mlp, d)``.
    Dropout (while training) on the attention weights and on both residual branches.

    Example:
        >>> layer = TransformerLayer(d_model=32, heads=4, mlp=64, scope="self")
        >>> layout = TokenLayout.grid(2, 4, 4)
        >>> layer(torch.randn(3, layout.length, 32), layout).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        mlp: int,
        dropout: float = 0.0,
        scope: str = "joint",
        rotary: bool = True,
    ) -> None:
        super().__init__()
        self.scope = check_choice("scope", scope, ATTENTION_SCOPES)
        check_positive_int("mlp", mlp)
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = MultiHeadAttention(d_model=d_model, heads=heads, dropout=dropout, rotary=rotary)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp), nn.GELU(), nn.Linear(mlp, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, layout: TokenLayout, bias: Tensor | None = None) -> Tensor:
        """``x (B, L, d)`` -> ``(B, L, d)``; ``bias`` broadcastable to ``(B, heads, L, L)``, added to the logits."""
        x = x + self.dropout(self.attention(self.norm1(x), layout, scope=self.scope, bias=bias))
        return x + self.dropout(self.mlp(self.norm2(x)))


class SuperGlueLayer(nn.Module):
    """SuperGlue-style attentional message passing: ``x + MLP([x, message])``.

    ``(B, L, d)`` -> ``(B, L, d)``. ``message`` is multi-head softmax attention
    (:class:`MultiHeadAttention`, 2-D RoPE) of each token to the tokens of its
    own view (``scope="self"``) or of all other views (``scope="cross"``). The
    MLP is ``Linear(2d, mlp)``, LayerNorm, ReLU, ``Linear(mlp, d)`` with its last
    bias zero at start (SuperGlue uses a BatchNorm in place of the LayerNorm).
    """

    def __init__(self, *, d_model: int, heads: int, mlp: int, dropout: float = 0.0, scope: str = "self") -> None:
        super().__init__()
        self.scope = check_choice("scope", scope, ("self", "cross"))
        check_positive_int("mlp", mlp)
        self.heads = heads
        self.attention = MultiHeadAttention(d_model=d_model, heads=heads, dropout=dropout, rotary=True)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, mlp), nn.LayerNorm(mlp), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mlp, d_model)
        )
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor, layout: TokenLayout, bias: Tensor | None = None) -> Tensor:
        """``x (B, L, d)`` -> ``(B, L, d)``; ``bias`` broadcastable to ``(B, heads, L, L)``, added to the logits."""
        message = self.attention(x, layout, scope=self.scope, bias=bias)
        return x + self.mlp(torch.cat([x, message], dim=-1))


class LoFTRLayer(nn.Module):
    """LoFTR-style encoder layer with linear attention, generalised to ``V`` views.

    ``(B, L, d)`` -> ``(B, L, d)``::

        message = norm1(merge(linear_attention(q(x), k(x), v(x))))
        x + norm2(MLP([x, message]))

    Linear attention (Katharopoulos et al.), feature map ``phi = elu + 1``, per head:
    ``message_l = phi(q_l) S_g / (phi(q_l) . z_g + eps)`` with
    ``S_g = sum_s phi(k_s) v_s^T`` and ``z_g = sum_s phi(k_s)`` over the keys
    ``s`` of group ``g``: the query's own view for ``scope="self"``, all other
    views for ``"cross"`` (every token for ``"joint"``). With one view a cross
    message is zero. Projections have no bias; MLP ``Linear(2d, mlp)``, ReLU,
    ``Linear(mlp, d)``; weights Xavier-uniform, as LoFTR. Written for this
    library: kornia's ``LocalFeatureTransformer`` serves a single pair of views.
    Linear attention has no logits, so no additive bias.

    Cost: ``O(V L d^2 / heads)`` for the per-group sums, linear in ``L``.
    """

    def __init__(self, *, d_model: int, heads: int, mlp: int, scope: str = "self", eps: float = 1e-6) -> None:
        super().__init__()
        _check_heads(d_model, heads)
        check_positive_int("mlp", mlp)
        self.scope = check_choice("scope", scope, ATTENTION_SCOPES)
        self.heads = heads
        self.eps = eps
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, mlp, bias=False), nn.ReLU(), nn.Linear(mlp, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def linear_attention(self, queries: Tensor, keys: Tensor, values: Tensor, layout: TokenLayout) -> Tensor:
        """Queries, keys, values ``(B, L, h, e)`` -> messages ``(B, L, h, e)`` within the layer's scope."""
        queries, keys = F.elu(queries) + 1.0, F.elu(keys) + 1.0
        length = layout.length
        if self.scope == "joint":
            groups = torch.ones(1, length, dtype=keys.dtype, device=keys.device)
            group_of = torch.zeros(length, dtype=torch.long, device=keys.device)
        else:
            one_hot = F.one_hot(layout.views, layout.num_views).T.to(keys.dtype)  # (V, L)
            groups = one_hot if self.scope == "self" else 1.0 - one_hot
            group_of = layout.views
        grouped_keys = groups[None, :, :, None, None] * keys[:, None]  # (B, G, L, h, e)
        key_values = torch.einsum("bgshe,bshv->bghev", grouped_keys, values)  # (B, G, h, e, e)
        key_sums = grouped_keys.sum(dim=2)  # (B, G, h, e)
        numerators = torch.einsum("blhe,bghev->bglhv", queries, key_values)
        denominators = torch.einsum("blhe,bghe->bglh", queries, key_sums)
        token = torch.arange(length, device=keys.device)
        numerator = numerators[:, group_of, token]  # (B, L, h, e): each query's own group
        denominator = denominators[:, group_of, token]
        return numerator / (denominator[..., None] + self.eps)

    def forward(self, x: Tensor, layout: TokenLayout, bias: Tensor | None = None) -> Tensor:
        """``x (B, L, d)`` -> ``(B, L, d)``. ``bias`` must be None (linear attention has no logits)."""
        _check_tokens(x, layout)
        if bias is not None:
            raise ValueError("bias: linear attention (LoFTR layers) has no logits to add a bias to; pass bias=None")
        split = (self.heads, -1)
        message = self.linear_attention(
            self.query(x).unflatten(-1, split), self.key(x).unflatten(-1, split), self.value(x).unflatten(-1, split), layout
        )
        message = self.norm1(self.merge(message.flatten(2)))
        return x + self.norm2(self.mlp(torch.cat([x, message], dim=-1)))


def _check_heads(d_model: int, heads: int) -> None:
    check_positive_int("d_model", d_model)
    check_positive_int("heads", heads)
    if d_model % heads:
        raise ValueError(f"heads: d_model={d_model} must be divisible by heads={heads}")


def _check_tokens(x: Tensor, layout: TokenLayout) -> None:
    if x.dim() != 3 or x.shape[1] != layout.length:
        raise ValueError(f"x: expected shape (B, L={layout.length}, d), got {tuple(x.shape)}")
