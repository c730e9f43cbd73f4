"""C-arm geometry: poses, detector pixels, projection matrices and rays.

The convention (the README's Conventions section; pinned by ``tests/test_geometry.py::test_convention_*``
and by a side-by-side render with diffdrr in ``tests/test_projector.py``):

* ``R = Rz(alpha) @ Rx(beta) @ Ry(gamma)`` (radians).
* Source ``s = c + R @ (0, sid, 0)``; detector centre ``d = c + R @ (0, sid - sdd, 0)``.
* Detector column axis ``u = R @ (-1, 0, 0)``, row axis ``v = R @ (0, 0, -1)``.
* Pixel (row r, column q) centre ``= d + (q - (W-1)/2) dx u + (r - (H-1)/2) dy v``.

So ``alpha = beta = gamma = 0`` is an AP view with the source anterior, the
patient's right on the left of the image and superior at the top;
``alpha = +pi/2`` puts the source at the patient's left. Distances are mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import as_tensor, check_int, check_length, check_position, check_range, check_tensor_kind, is_int

__all__ = ["CArm", "rotation_matrix", "project_points", "patch_index", "camera_to_world", "relative_camera_pose"]

MAX_ANGLE = 1e3
"""Largest angle magnitude accepted, radians (float32 keeps 6e-5 rad there)."""
MAX_DETECTOR_PIXELS = 32768
"""Largest detector height or width accepted, pixels."""


def rotation_matrix(alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:
    """``Rz(alpha) @ Rx(beta) @ Ry(gamma)`` for angles of any (common) shape ``S``.

    Returns:
        ``(*S, 3, 3)``.
    """
    ca, sa = torch.cos(alpha), torch.sin(alpha)
    cb, sb = torch.cos(beta), torch.sin(beta)
    cg, sg = torch.cos(gamma), torch.sin(gamma)
    # Rz(a) Rx(b) Ry(g), multiplied out.
    row0 = torch.stack([ca * cg - sa * sb * sg, -sa * cb, ca * sg + sa * sb * cg], -1)
    row1 = torch.stack([sa * cg + ca * sb * sg, ca * cb, sa * sg - ca * sb * cg], -1)
    row2 = torch.stack([-cb * sg, sb, cb * cg], -1)
    return torch.stack([row0, row1, row2], -2)


class CArm:
    """The poses of ``V`` views for each of ``B`` samples, and their detector.

    Every pose parameter is a number, sequence or tensor broadcastable to
    ``(B, V)``: a scalar, ``(V,)`` or ``(B, V)``; ``isocenter`` to ``(B, V, 3)``.
    A 1-D parameter is always read as views (``(V,)`` means one sample with
    ``V`` views, as in NumPy broadcasting): ``CArm(alpha=torch.rand(16))`` is
    ``B = 1, V = 16``. For 16 samples of one view each, give the unambiguous
    ``(B, V)`` shape: ``alpha=torch.rand(16, 1)``.

    Args:
        alpha: primary angle, radians (rotation about +z, the patient's axis).
        beta: secondary angle, radians (cranio-caudal tilt, about +x).
        gamma: in-plane roll, radians.
        sid: source-to-isocenter distance, mm.
        sdd: source-to-detector distance, mm; must exceed ``sid``.
        isocenter: world mm, the point the C-arm rotates about.
        height, width: detector size in pixels (``width`` defaults to ``height``),
            at most 32768.
        pixel_spacing: detector pixel edge in mm (broadcastable to ``(B, V)``).

    Bounds (``ValueError`` outside them, naming the argument): angles within
    1e3 rad; ``sid``, ``sdd`` and ``pixel_spacing`` within 1e-3 to 1e5 mm;
    ``isocenter`` within 1e5 mm of the world origin; all finite. Poses are
    held in float32 or wider (half-precision inputs are promoted).

    Example:
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.5708]), sid=800.0, sdd=1000.0,
        ...             height=64, pixel_spacing=2.0)
        >>> carm.batch_shape, carm.pixel_positions().shape
        ((1, 2), torch.Size([1, 2, 64, 64, 3]))
    """

    def __init__(
        self,
        *,
        alpha: float | Tensor = 0.0,
        beta: float | Tensor = 0.0,
        gamma: float | Tensor = 0.0,
        sid: float | Tensor,
        sdd: float | Tensor,
        isocenter: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
        height: int,
        width: int | None = None,
        pixel_spacing: float | Tensor,
    ) -> None:
        self.height = check_int("height", height, minimum=1, maximum=MAX_DETECTOR_PIXELS)
        self.width = check_int("width", height if width is None else width, minimum=1, maximum=MAX_DETECTOR_PIXELS)
        params = {
            name: as_tensor(name, value)
            for name, value in dict(
                alpha=alpha, beta=beta, gamma=gamma, sid=sid, sdd=sdd, pixel_spacing=pixel_spacing
            ).items()
        }
        iso = as_tensor("isocenter", isocenter)
        dtype = torch.get_default_dtype()
        for value in (*params.values(), iso):
            if value.is_floating_point():
                dtype = torch.promote_types(dtype, value.dtype)
        dtype = torch.promote_types(dtype, torch.float32)  # half-precision poses are computed in float32
        device = next((p.device for p in (*params.values(), iso) if p.device.type != "cpu"), torch.device("cpu"))
        for name, value in params.items():
            if value.dim() > 2:
                raise ValueError(f"{name}: expected a scalar, (V,) or (B, V), got shape {tuple(value.shape)}")
            if name in ("alpha", "beta", "gamma"):
                check_range(name, value, -MAX_ANGLE, MAX_ANGLE, "rad")
            else:
                check_length(name, value)
            params[name] = value.to(device=device, dtype=dtype)
        if iso.dim() == 0 or iso.shape[-1] != 3 or iso.dim() > 3:
            raise ValueError(f"isocenter: expected shape (3,), (V, 3) or (B, V, 3), got {tuple(iso.shape)}")
        check_position("isocenter", iso)
        iso = iso.to(device=device, dtype=dtype)
        try:
            shape = torch.broadcast_shapes(*[p.shape for p in params.values()], iso.shape[:-1])
        except RuntimeError as error:
            shapes = {name: tuple(p.shape) for name, p in params.items()} | {"isocenter": tuple(iso.shape)}
            raise ValueError(f"alpha, beta, gamma, sid, sdd, pixel_spacing, isocenter: shapes do not broadcast: {shapes}") from error
        shape = (1,) * (2 - len(shape)) + tuple(shape)
        if 0 in shape:
            empty = [name for name, value in (*params.items(), ("isocenter", iso)) if value.numel() == 0]
            raise ValueError(f"{', '.join(empty)}: expected at least one sample and one view, "
                             f"got an empty pose batch {shape}")
        for name, value in params.items():
            params[name] = value.expand(shape)
        if not bool((params["sdd"] > params["sid"]).all()):
            gap = float((params["sdd"] - params["sid"]).min())
            raise ValueError(
                f"sdd: expected the source-to-detector distance to exceed sid (the detector lies beyond "
                f"the isocenter), but sdd - sid reaches {gap:g} mm"
            )
        self.alpha = params["alpha"]
        self.beta = params["beta"]
        self.gamma = params["gamma"]
        self.sid = params["sid"]
        self.sdd = params["sdd"]
        self.pixel_spacing = params["pixel_spacing"]
        self.isocenter = iso.expand(*shape, 3)

    # ------------------------------------------------------------------ basics
    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(B, V)``."""
        return tuple(self.alpha.shape)

    @property
    def device(self) -> torch.device:
        return self.alpha.device

    @property
    def dtype(self) -> torch.dtype:
        return self.alpha.dtype

    def __repr__(self) -> str:
        b, v = self.batch_shape
        return f"CArm(B={b}, V={v}, detector={self.height}x{self.width})"

    def _replace(self, **changes) -> "CArm":
        fields = dict(
            alpha=self.alpha, beta=self.beta, gamma=self.gamma, sid=self.sid, sdd=self.sdd,
            isocenter=self.isocenter, height=self.height, width=self.width, pixel_spacing=self.pixel_spacing,
        )
        fields.update(changes)
        return CArm(**fields)

    def select(self, batch_index: int) -> "CArm":
        """The poses of sample ``batch_index`` as a ``B = 1`` C-arm."""
        sl = slice(batch_index, batch_index + 1)
        return self._replace(
            alpha=self.alpha[sl], beta=self.beta[sl], gamma=self.gamma[sl], sid=self.sid[sl], sdd=self.sdd[sl],
            isocenter=self.isocenter[sl], pixel_spacing=self.pixel_spacing[sl],
        )

    def select_views(self, views: Sequence[int] | Tensor) -> "CArm":
        """The C-arm restricted (or permuted) to the given view indices."""
        index = torch.as_tensor(views, dtype=torch.long, device=self.device)
        return self._replace(
            alpha=self.alpha[:, index], beta=self.beta[:, index], gamma=self.gamma[:, index],
            sid=self.sid[:, index], sdd=self.sdd[:, index], isocenter=self.isocenter[:, index],
            pixel_spacing=self.pixel_spacing[:, index],
        )

    def to(self, device=None, dtype=None) -> "CArm":
        """The same C-arm on another device or dtype (validated at construction, not re-checked)."""
        moved = object.__new__(CArm)
        moved.height, moved.width = self.height, self.width
        non_blocking = device is not None and torch.device(device).type != "cpu"  # host copies must complete
        for name in ("alpha", "beta", "gamma", "sid", "sdd", "isocenter", "pixel_spacing"):
            setattr(moved, name, getattr(self, name).to(device=device, dtype=dtype, non_blocking=non_blocking))
        return moved

    # --------------------------------------------------------------- geometry
    def rotation(self) -> Tensor:
        """``(B, V, 3, 3)`` rotation ``R`` of each view."""
        return rotation_matrix(self.alpha, self.beta, self.gamma)

    def source_positions(self) -> Tensor:
        """``(B, V, 3)`` world mm of the X-ray source."""
        return self.isocenter + self.rotation()[..., :, 1] * self.sid[..., None]

    def detector_centers(self) -> Tensor:
        """``(B, V, 3)`` world mm of the detector centre."""
        return self.isocenter + self.rotation()[..., :, 1] * (self.sid - self.sdd)[..., None]

    def detector_axes(self) -> tuple[Tensor, Tensor]:
        """Unit vectors ``(u, v)``, each ``(B, V, 3)``: the directions of increasing column and row."""
        rotation = self.rotation()
        return -rotation[..., :, 0], -rotation[..., :, 2]

    def detector_points(self, rows: Tensor | float, cols: Tensor | float) -> Tensor:
        """World mm of detector points at fractional pixel coordinates, in every view.

        The pixel-centre convention, written once: ``(row r, column q)`` lies at
        ``d + (q - (W-1)/2) dx u + (r - (H-1)/2) dx v``; integers are pixel
        centres and ``(0, 0)`` is the top-left pixel's centre.

        Args:
            rows, cols: pixel coordinates of any (broadcastable) shape ``S``, the
                same in every view.

        Returns:
            ``(B, V, *S, 3)``.
        """
        rows, cols = torch.broadcast_tensors(
            torch.as_tensor(rows, device=self.device, dtype=self.dtype),
            torch.as_tensor(cols, device=self.device, dtype=self.dtype),
        )
        u, v = self.detector_axes()
        lift = (slice(None), slice(None), *([None] * rows.dim()))
        spacing = self.pixel_spacing[lift][..., None]
        row_offset = (rows - (self.height - 1) / 2)[..., None] * spacing
        col_offset = (cols - (self.width - 1) / 2)[..., None] * spacing
        return self.detector_centers()[lift] + col_offset * u[lift] + row_offset * v[lift]

    def pixel_positions(self) -> Tensor:
        """``(B, V, H, W, 3)`` world mm of every pixel centre."""
        rows = torch.arange(self.height, device=self.device, dtype=self.dtype)
        cols = torch.arange(self.width, device=self.device, dtype=self.dtype)
        return self.detector_points(rows[:, None], cols[None, :])

    def rays(self) -> tuple[Tensor, Tensor]:
        """Rays from the source to every pixel centre.

        Returns:
            ``origins (B, V, 1, 1, 3)`` (the sources) and ``targets (B, V, H, W, 3)``
            (the pixel centres), world mm; a ray is ``origin + t (target - origin)``,
            ``t`` in ``[0, 1]``.
        """
        return self.source_positions()[..., None, None, :], self.pixel_positions()

    def projection_matrices(self) -> Tensor:
        """``(B, V, 3, 4)`` matrices ``P`` with ``P @ (x, y, z, 1) ~ (row, column, 1)``.

        The third homogeneous coordinate is the depth of the point from the
        source along the principal axis (mm), positive in front of the source.
        """
        rotation = self.rotation()
        u, v = self.detector_axes()
        normal = rotation[..., :, 1]  # from the detector towards the source
        source = self.source_positions()
        focal = (self.sdd / self.pixel_spacing)[..., None]
        depth_row = torch.cat([-normal, (normal * source).sum(-1, keepdim=True)], -1)
        row_row = torch.cat([v, -(v * source).sum(-1, keepdim=True)], -1) * focal
        col_row = torch.cat([u, -(u * source).sum(-1, keepdim=True)], -1) * focal
        row_row = row_row + (self.height - 1) / 2 * depth_row
        col_row = col_row + (self.width - 1) / 2 * depth_row
        return torch.stack([row_row, col_row, depth_row], -2)


def project_points(carm: CArm, points: Tensor, *, return_depth: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Project world points into every view.

    Args:
        carm: the C-arm, batch ``(B, V)``.
        points: ``(B, P, 3)`` or ``(P, 3)`` world mm (``(P, 3)`` is shared by all
            samples); a tensor, array or nested list. Half-precision and integer
            points are computed in float32.
        return_depth: also return the depth along the principal axis (mm).

    Returns:
        ``(B, V, P, 2)`` pixel coordinates as ``(row, column)``, float32 or
        wider; integer values fall on pixel centres, ``(0, 0)`` is the top-left
        pixel's centre. With ``return_depth``, also ``(B, V, P)`` depths.
        The values of ``points`` are not inspected (this runs inside the
        sampler for every batch): a non-finite point, or one in the plane of the
        source (depth 0), gives non-finite coordinates for that point only.

    Example:
        >>> carm = CArm(sid=800.0, sdd=1000.0, height=65, pixel_spacing=1.0)
        >>> project_points(carm, torch.zeros(1, 1, 3))  # the isocenter hits the centre
        tensor([[[[32., 32.]]]])
    """
    if not isinstance(carm, CArm):
        raise TypeError(f"carm: expected a CArm, got {type(carm).__name__}")
    if not isinstance(points, Tensor):
        points = as_tensor("points", points)
    check_tensor_kind("points", points)
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    points = points.to(torch.promote_types(points.dtype, torch.float32))  # float16 would overflow at mm scales
    if points.dim() == 2:
        points = points.unsqueeze(0)
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] < 1:
        raise ValueError(f"points: expected shape (B, P, 3) or (P, 3) with B >= 1, got {tuple(points.shape)}")
    batch = carm.batch_shape[0]
    if points.shape[0] not in (1, batch) and batch != 1:
        raise ValueError(f"points: batch {points.shape[0]} does not match the C-arm's batch {batch}")
    out_batch = max(batch, points.shape[0])
    matrices = carm.projection_matrices().to(points.dtype).expand(out_batch, -1, -1, -1)
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1).expand(out_batch, -1, -1)
    projected = torch.einsum("bvij,bpj->bvpi", matrices, homogeneous)
    depth = projected[..., 2]
    pixels = projected[..., :2] / depth[..., None]
    return (pixels, depth) if return_depth else pixels


def patch_index(pixels: Tensor, image_size: tuple[int, int], patch_size: int) -> Tensor:
    """The patch holding each pixel position: row-major over the ``(H/k, W/k)`` grid, ``-1`` outside the view.

    Args:
        pixels: ``(..., 2)`` (row, column) coordinates (integers are pixel centres).
        image_size: ``(H, W)`` pixels.
        patch_size: ``k``.

    Returns:
        ``(...)`` long; NaN coordinates give ``-1``.

    Example:
        >>> patch_index(torch.tensor([[0.0, 0.0], [15.6, 16.0], [-0.6, 3.0]]), (32, 32), 16)
        tensor([ 0,  3, -1])
    """
    row = torch.floor((pixels[..., 0] + 0.5) / patch_size)
    col = torch.floor((pixels[..., 1] + 0.5) / patch_size)
    rows, cols = image_size[0] // patch_size, image_size[1] // patch_size
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)  # False for NaN
    return torch.where(inside, row * cols + col, torch.full_like(row, -1.0)).long()


def camera_to_world(carm: CArm) -> Tensor:
    """``(B, V, 4, 4)`` rigid camera-to-world transforms (mm) of every view.

    The camera frame: origin at the X-ray source; ``x`` along the detector's
    column axis ``u`` (increasing column), ``y`` along its row axis ``v``
    (increasing row), ``z = x cross y`` along the principal ray, from the
    source towards the detector (the usual computer-vision camera: x right,
    y down, z forward). In terms of ``R``: ``x = -R[:, 0]``, ``y = -R[:, 2]``,
    ``z = -R[:, 1]``. A point with camera coordinates ``p`` is at world
    ``T[:3, :3] @ p + T[:3, 3]``.

    Example:
        >>> carm = CArm(alpha=torch.tensor([0.0, 1.5708]), sid=800.0, sdd=1000.0, height=8, pixel_spacing=1.0)
        >>> camera_to_world(carm).shape
        torch.Size([1, 2, 4, 4])
    """
    rotation = carm.rotation()
    axes = torch.stack([-rotation[..., :, 0], -rotation[..., :, 2], -rotation[..., :, 1]], -1)  # columns x, y, z
    transform = torch.zeros(*carm.batch_shape, 4, 4, dtype=carm.dtype, device=carm.device)
    transform[..., :3, :3] = axes
    transform[..., :3, 3] = carm.source_positions()
    transform[..., 3, 3] = 1.0
    return transform


def _rigid_inverse(transform: Tensor) -> Tensor:
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def relative_camera_pose(carm: CArm, *, source: int = 0) -> Tensor:
    """``(B, V, 4, 4)``: the rigid transform from view ``source``'s camera frame to each view's camera frame.

    ``T_rel[b, v] = inverse(camera_to_world[b, v]) @ camera_to_world[b, source]``:
    a point with coordinates ``p`` in the source camera frame has coordinates
    ``T_rel[b, v] @ p`` in view ``v``'s camera frame (mm; the identity for ``v = source``).
    """
    views = carm.batch_shape[1]
    if not is_int(source) or not 0 <= source < views:
        raise ValueError(f"source: expected a view index in [0, {views}), got {source!r}")
    transforms = camera_to_world(carm)
    return _rigid_inverse(transforms) @ transforms[:, source : source + 1]
