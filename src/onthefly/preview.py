"""Pictures: rendered views with patch correspondences overlaid, and the matrix itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .correspondence import correspondence_map
from .projector import to_display

__all__ = ["save_batch_preview", "save_correspondence_preview", "save_prediction_preview", "save_views"]

_COLOURS = ((0.95, 0.25, 0.2), (0.2, 0.75, 0.95), (0.55, 0.95, 0.3), (0.95, 0.75, 0.15), (0.8, 0.4, 0.95))


def _figure(rows: int, columns: int, figsize: tuple[float, float]):
    """A figure and its ``(rows, columns)`` axes, drawn by matplotlib's Agg canvas (no pyplot, no global backend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _save(figure, path: str | Path) -> Path:
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def save_views(images: Tensor, path: str | Path, *, titles: Sequence[str] | None = None) -> Path:
    """Write ``(V, 1, H, W)`` (or ``(V, H, W)``) line integrals side by side as a PNG."""
    images = images.detach().float().reshape(-1, *images.shape[-2:]).cpu()
    figure, axes = _figure(1, len(images), (3.2 * len(images), 3.4))
    for index, (axis, image) in enumerate(zip(axes[0], images)):
        axis.imshow(to_display(image).numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(titles[index] if titles else f"view {index}", fontsize=10)
        axis.axis("off")
    return _save(figure, path)


def save_correspondence_preview(
    images: Tensor,
    correspondence: Tensor,
    path: str | Path,
    *,
    patch_size: int,
    patches: Sequence[tuple[int, int]] | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG: the views, chosen patches of view 0 outlined, their matches in the
    other views as coloured heat overlays, and the correspondence matrix.

    Args:
        images: ``(V, 1, H, W)`` line integrals of one sample.
        correspondence: ``(V*N, V*N)`` of the same sample.
        path: where to write the PNG.
        patch_size: ``k``.
        patches: ``(row, col)`` patches of view 0 (default: three spread over the body).
        titles: one per view.
    """
    views = images.reshape(-1, *images.shape[-2:]).shape[0]
    figure, axes = _figure(1, views + 1, (3.4 * (views + 1), 3.7))
    _draw_sample(axes[0], images, correspondence, patch_size=patch_size, patches=patches, titles=titles)
    return _save(figure, path)


def save_batch_preview(batch, path: str | Path, *, samples: int = 4) -> Path:
    """Write a PNG grid of a sampled :class:`~onthefly.sampling.batch.DRRBatch`: one row per sample
    (its views with correspondence overlays, then its matrix), titled with the drawn angles."""
    count = min(samples, batch.batch_size)
    views = batch.views
    figure, axes = _figure(count, views + 1, (3.0 * (views + 1), 3.2 * count))
    alpha, beta = torch.rad2deg(batch.params.alpha).tolist(), torch.rad2deg(batch.params.beta).tolist()
    for row in range(count):
        titles = [f"#{row} view {v}: {alpha[row][v]:.0f}/{beta[row][v]:.0f} deg" for v in range(views)]
        _draw_sample(axes[row], batch.images[row], batch.correspondence[row], patch_size=batch.patch_size,
                     titles=titles)
    return _save(figure, path)


def save_prediction_preview(
    images: Tensor, predicted: Tensor, target: Tensor, path: str | Path, *, patch_size: int, title: str | None = None
) -> Path:
    """Write a PNG comparing a predicted correspondence matrix with the true one for one sample.

    Top row: the true matches of a few patches of view 0 (chosen from the truth)
    and the true matrix; bottom row: the predicted ones for the same patches.
    ``images`` is ``(V, 1, H, W)``, ``predicted`` and ``target`` ``(V*N, V*N)``.
    """
    views = images.reshape(-1, *images.shape[-2:]).shape[0]
    grid = (images.shape[-2] // patch_size, images.shape[-1] // patch_size)
    patches = _default_patches(target.detach().float().cpu(), grid, views)
    figure, axes = _figure(2, views + 1, (3.0 * (views + 1), 7.0))
    for row, (matrix, name) in enumerate(((target, "true"), (predicted, "predicted"))):
        titles = [f"{name}: view {v}" for v in range(views)]
        _draw_sample(axes[row], images, matrix, patch_size=patch_size, patches=patches, titles=titles)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _draw_sample(axes, images: Tensor, correspondence: Tensor, *, patch_size: int, patches=None, titles=None) -> None:
    """Draw one sample's views (with overlays) and its matrix into ``V + 1`` axes."""
    from matplotlib.patches import Rectangle

    images = images.detach().float().reshape(-1, *images.shape[-2:]).cpu()
    correspondence = correspondence.detach().float().cpu()
    views, height, width = images.shape
    grid = (height // patch_size, width // patch_size)
    if patches is None:
        patches = _default_patches(correspondence, grid, views)
    for view in range(views):
        axes[view].imshow(to_display(images[view]).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[view].set_title(titles[view] if titles else f"view {view}", fontsize=9)
        axes[view].axis("off")
    for number, (row, col) in enumerate(patches):
        colour = _COLOURS[number % len(_COLOURS)]
        axes[0].add_patch(
            Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                          fill=False, edgecolor=colour, linewidth=2)
        )
        for view in range(1, views):
            heat = correspondence_map(correspondence, 0, (row, col), view, grid_shape=grid)
            heat = torch.kron(heat, torch.ones(patch_size, patch_size))
            overlay = torch.zeros(height, width, 4)
            overlay[..., :3] = torch.tensor(colour)
            overlay[..., 3] = 0.75 * heat
            axes[view].imshow(overlay.numpy())
    axes[-1].imshow(correspondence.numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    axes[-1].set_title(f"C ({views} x {grid[0] * grid[1]} tokens)", fontsize=9)
    for boundary in range(1, views):
        for line in (axes[-1].axhline, axes[-1].axvline):
            line(boundary * grid[0] * grid[1] - 0.5, color="white", linewidth=0.6)
    axes[-1].set_xticks([])
    axes[-1].set_yticks([])


def _default_patches(correspondence: Tensor, grid: tuple[int, int], views: int) -> list[tuple[int, int]]:
    """Three patches of view 0 with strong matches, spread over rows."""
    n_patches = grid[0] * grid[1]
    strength = correspondence[:n_patches, n_patches:].amax(1) if views > 1 else correspondence[:n_patches].amax(1)
    chosen: list[tuple[int, int]] = []
    for band in range(3):
        low, high = grid[0] * (band + 1) // 4 - 1, grid[0] * (band + 1) // 4 + 1
        rows = torch.arange(n_patches) // grid[1]
        candidates = strength.masked_fill((rows < low) | (rows > high), -1.0)
        index = int(candidates.argmax())
        chosen.append((index // grid[1], index % grid[1]))
    return chosen
