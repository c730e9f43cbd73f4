"""The radiograph physics a sampler randomises: :class:`Physics` (ranges) and :class:`PhysicsParams` (draws).

``Physics`` is frozen, keyword-only and validated at construction; every
randomised field is a value or a ``(low, high)`` range drawn uniformly per
sample. ``Physics.draw(batch_size, generator)`` gives :class:`PhysicsParams`,
``(B,)`` tensors on the generator's device; :func:`~onthefly.physics.radiograph`
turns per-material line integrals and those parameters into images. Drawing
apart from making (TorchIO's ``make_params`` / ``apply_transform``): a
sampler draws ``PhysicsParams`` in its draw stage, keeps them with the
sample's parameters, and applies them after rendering.

Example (a sampler's draw and make stages):
    >>> from onthefly.physics import Physics, radiograph
    >>> physics = Physics(kv=(60.0, 110.0), dose=(5e3, 2e4), grid=0.5)
    >>> params = physics.draw(4, torch.Generator().manual_seed(0))   # draw stage
    >>> params.kv.shape, params.grid.shape
    (torch.Size([4]), torch.Size([4]))
    >>> lines = torch.rand(4, 2, 3, 32, 32)                           # (B, V, M, H, W) g/cm^2 from the renderer
    >>> images = radiograph(lines, params, pixel_spacing=2.0)
    >>> images.shape                                                  # make stage: (B, V, 1, H, W) in [0, 1]
    torch.Size([4, 2, 1, 32, 32])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_int, check_real
from .data import MATERIALS, TABLE_ENERGY_RANGE_KEV
from .detector import blur_radius
from .materials import BODY_MATERIALS
from .scatter import GRID_PRIMARY_TRANSMISSION, GRID_SCATTER_TRANSMISSION
from .spectrum import KV_RANGE, TOTAL_FILTRATION_AL_MM, energy_bins

__all__ = ["Physics", "PhysicsParams"]

Range = float | tuple[float, float]

# Field -> (lowest, highest accepted, unit). Bounds are physical: outside them the models do not hold.
_BOUNDS = {
    "kv": (*KV_RANGE, "kV"),
    "filtration_al_mm": (0.0, 20.0, "mm"),
    "filtration_cu_mm": (0.0, 2.0, "mm"),
    "dose": (1.0, 1e9, "photons per pixel"),
    "scatter": (0.0, 10.0, "(SPR scale)"),
    "air_gap_mm": (0.0, 1000.0, "mm"),
    "blur_mm": (0.0, 5.0, "mm"),
    "electronic_noise": (0.0, 1e6, "quanta per pixel"),
    "detector_csi_mm": (0.05, 3.0, "mm"),
}
_RANDOMISED = tuple(_BOUNDS) + ("grid",)


def _as_range(name: str, value, low: float, high: float, unit: str) -> tuple[float, float]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected a number or a (low, high) pair, got {value!r}")
        first = check_real(name, value[0], low=low, high=high, unit=unit)
        second = check_real(name, value[1], low=low, high=high, unit=unit)
        if first > second:
            raise ValueError(f"{name}: expected low <= high, got ({first:g}, {second:g})")
        return first, second
    number = check_real(name, value, low=low, high=high, unit=unit)
    return number, number


@dataclass(frozen=True, kw_only=True)
class Physics:
    """How views become radiographs, with the ranges a sampler draws from (each a value or ``(low, high)``).

    Attributes:
        kv: tube voltage, kV, in [40, 150] (IEC 61267's range).
        filtration_al_mm: total aluminium filtration, mm, in [0, 20] (default: the value fitted to the RQR
            half-value layers, :data:`~onthefly.physics.spectrum.TOTAL_FILTRATION_AL_MM`).
        filtration_cu_mm: added copper filtration, mm, in [0, 2].
        dose: photons per pixel at the unattenuated detector, in [1, 1e9].
        scatter: scale of the scatter model's amplitude (``True`` = 1, ``False`` = 0: no scatter), in [0, 10].
        grid: probability that a sample has an anti-scatter grid (``True`` = 1, ``False`` = 0).
        air_gap_mm: distance from the body's exit surface to the detector, mm, in [0, 1000].
        blur_mm: standard deviation of the detector's Gaussian blur, mm on the detector, in [0, 5].
        electronic_noise: standard deviation of the read-out noise, quanta per pixel, >= 0.
        detector_csi_mm: thickness of the CsI scintillator, mm, in [0.05, 3].
        energy_bin_kev: width of the energy bins (fixed: the number of bins is a static shape), keV, in
            [0.5, 20]; the bins run from ``lowest_energy_kev`` to the highest ``kv``.
        lowest_energy_kev: lower edge of the first bin, keV, in [1, 30], below the lowest ``kv`` by at
            least one bin.
        materials: names of the ``M`` materials of the line integrals' channels (from
            :data:`~onthefly.physics.data.MATERIALS`), default air, soft tissue, bone.
        grid_primary_transmission, grid_scatter_transmission: the grid's transmission of primary and
            scattered radiation, in (0, 1].
    """

    kv: Range = (50.0, 120.0)
    filtration_al_mm: Range = TOTAL_FILTRATION_AL_MM
    filtration_cu_mm: Range = 0.0
    dose: Range = (2e3, 2e4)
    scatter: bool | Range = True
    grid: bool | float = False
    air_gap_mm: Range = 0.0
    blur_mm: Range = (0.1, 0.25)
    electronic_noise: Range = 2.0
    detector_csi_mm: Range = 0.6
    energy_bin_kev: float = 5.0
    lowest_energy_kev: float = 10.0
    materials: tuple[str, ...] = BODY_MATERIALS
    grid_primary_transmission: float = GRID_PRIMARY_TRANSMISSION
    grid_scatter_transmission: float = GRID_SCATTER_TRANSMISSION
    _ranges: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = {}
        for name, (low, high, unit) in _BOUNDS.items():
            value = getattr(self, name)
            if name == "scatter" and isinstance(value, bool):
                value = float(value)
            ranges[name] = _as_range(name, value, low, high, unit)
        grid = float(self.grid) if isinstance(self.grid, bool) else check_real("grid", self.grid, low=0.0, high=1.0)
        ranges["grid"] = (grid, grid)
        object.__setattr__(self, "_ranges", ranges)
        for name in ("grid_primary_transmission", "grid_scatter_transmission"):
            value = check_real(name, getattr(self, name), low=0.0, high=1.0)
            if value == 0.0:
                raise ValueError(f"{name}: expected a transmission in (0, 1], got 0")
        if isinstance(self.energy_bin_kev, (tuple, list)):
            raise TypeError(f"energy_bin_kev: expected one number (the bins are a static shape), got a range "
                            f"{self.energy_bin_kev!r}")
        width = check_real("energy_bin_kev", self.energy_bin_kev, low=0.5, high=20.0, unit="keV")
        lowest = check_real("lowest_energy_kev", self.lowest_energy_kev, low=TABLE_ENERGY_RANGE_KEV[0], high=30.0,
                            unit="keV")
        if lowest + width > ranges["kv"][0]:
            raise ValueError(f"energy_bin_kev, lowest_energy_kev: expected at least one bin below the lowest kv "
                             f"({ranges['kv'][0]:g} kV), got bins of {width:g} keV from {lowest:g} keV")
        if isinstance(self.materials, str) or not isinstance(self.materials, (tuple, list)) or not self.materials:
            raise TypeError(f"materials: expected a non-empty tuple of names from {list(MATERIALS)}, "
                            f"got {self.materials!r}")
        for name in self.materials:
            if name not in MATERIALS:
                raise ValueError(f"materials: expected names from {list(MATERIALS)}, got {name!r}")
        object.__setattr__(self, "materials", tuple(self.materials))

    def range(self, name: str) -> tuple[float, float]:
        """``(low, high)`` of a randomised field (a fixed value gives ``(value, value)``)."""
        if name not in self._ranges:
            raise ValueError(f"name: expected one of {list(self._ranges)}, got {name!r}")
        return self._ranges[name]

    def energies(self, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """Centres ``(E,)`` of the energy bins, keV: from ``lowest_energy_kev`` to the highest kV."""
        return energy_bins(self.energy_bin_kev, self.range("kv")[1], lowest_kev=self.lowest_energy_kev,
                           dtype=dtype, device=device)

    def blur_radius(self, pixel_spacing: float) -> int:
        """Half-width (pixels) of the blur kernels for the largest ``blur_mm`` (a static shape)."""
        return blur_radius(self.range("blur_mm")[1], pixel_spacing)

    def draw(self, batch_size: int, generator: torch.Generator) -> "PhysicsParams":
        """``(B,)`` float32 draws of every randomised field on ``generator``'s device (uniform in each range;
        ``grid`` is 1 with its probability, else 0)."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        device = generator.device
        values = {}
        for name in _RANDOMISED:
            uniform = torch.rand(batch_size, generator=generator, device=device)
            low, high = self._ranges[name]
            if name == "grid":
                values[name] = (uniform < low).to(torch.float32)
            else:
                values[name] = low + (high - low) * uniform
        values["noise_seed"] = torch.randint(0, 2**62, (batch_size,), generator=generator, device=device)
        return PhysicsParams(physics=self, **values)


@dataclass(frozen=True, kw_only=True)
class PhysicsParams:
    """One batch's physics, ``(B,)`` float tensors (units as :class:`Physics`), and the config they came from.

    ``grid`` is 0 or 1; ``scatter`` the amplitude scale; ``noise_seed`` ``(B,)`` int64 keys each sample's
    noise (so the images are a pure function of the parameters). Build one by :meth:`Physics.draw` or
    directly (e.g. to fix a value for a test).
    """

    physics: Physics
    kv: Tensor
    filtration_al_mm: Tensor
    filtration_cu_mm: Tensor
    dose: Tensor
    scatter: Tensor
    grid: Tensor
    air_gap_mm: Tensor
    blur_mm: Tensor
    electronic_noise: Tensor
    detector_csi_mm: Tensor
    noise_seed: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.physics, Physics):
            raise TypeError(f"physics: expected a Physics, got {type(self.physics).__name__}")
        sizes = {}
        for name in _RANDOMISED:
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dim() != 1:
                raise TypeError(f"{name}: expected a (B,) tensor, got {value!r:.60}")
            sizes[name] = value.shape[0]
        if not isinstance(self.noise_seed, Tensor) or self.noise_seed.dim() != 1 or self.noise_seed.is_floating_point():
            raise TypeError(f"noise_seed: expected a (B,) integer tensor, got {self.noise_seed!r:.60}")
        sizes["noise_seed"] = self.noise_seed.shape[0]
        if len(set(sizes.values())) != 1:
            raise ValueError(f"PhysicsParams: expected (B,) tensors of one batch size, got sizes {sizes}")

    @property
    def batch_size(self) -> int:
        return self.kv.shape[0]

    def to(self, device) -> "PhysicsParams":
        """The same parameters on ``device``."""
        names = (*_RANDOMISED, "noise_seed")
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in names})
