"""One entry point from per-material line integrals to displayed radiographs.

``radiograph(material_integrals, params, pixel_spacing=..., generator=...)`` applies, per sample and all at
once (no Python loop over samples or views): the tube spectrum, polychromatic transmission with the CsI
detector's response, scatter (with the grid and air gap), the dose, quantum noise, the detector's blur and
electronic noise, log normalisation and the display processing. :func:`radiograph_stages` returns every
intermediate image too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import MIN_LENGTH_MM, check_choice, check_real
from ..display import Display
from .config import PhysicsParams
from .data import mass_attenuation
from .detector import NOISE_MODES, electronic_noise, gaussian_blur, quantum_noise
from .processing import PROCESSED_RADIOGRAPH, log_normalise, process
from .scatter import scatter_signal, water_equivalent_thickness
from .spectrum import _tube_spectrum
from .transmission import detector_response, effective_mass_attenuation, polychromatic_intensity, signal_weights

__all__ = ["radiograph", "radiograph_stages"]


def _check(material_integrals, params, pixel_spacing, generator, noise) -> float:
    if not isinstance(params, PhysicsParams):
        raise TypeError(f"params: expected PhysicsParams (Physics.draw), got {type(params).__name__}")
    if not isinstance(material_integrals, Tensor) or not material_integrals.is_floating_point():
        raise TypeError(f"material_integrals: expected a floating tensor (B, V, M, H, W) g/cm^2, "
                        f"got {material_integrals!r:.60}")
    materials = params.physics.materials
    shape = tuple(material_integrals.shape)
    if len(shape) != 5 or shape[2] != len(materials) or shape[0] != params.batch_size:
        raise ValueError(f"material_integrals: expected shape (B={params.batch_size}, V, M={len(materials)}, H, W) "
                         f"for the materials {materials}, got {shape}")
    check_choice("noise", noise, NOISE_MODES)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return check_real("pixel_spacing", pixel_spacing, low=MIN_LENGTH_MM, unit="mm")


def radiograph_stages(material_integrals: Tensor, params: PhysicsParams, *, pixel_spacing: float,
                      generator: torch.Generator | None = None, noise: str = "gaussian",
                      display: Display = PROCESSED_RADIOGRAPH) -> dict[str, Tensor]:
    """Every stage of :func:`radiograph`, each ``(B, V, 1, H, W)``.

    Returns:
        ``{"primary", "scatter"}``: signal relative to the unattenuated beam, before the grid;
        ``"expected"``: mean detected quanta (dose x (grid-weighted primary + scatter));
        ``"signal"``: after quantum noise, blur and electronic noise (quanta);
        ``"log"``: ``-ln(signal / flat field)``; ``"image"``: the display, in ``[0, 1]``.
    """
    pixel_spacing = _check(material_integrals, params, pixel_spacing, generator, noise)
    physics = params.physics
    dtype, device = material_integrals.dtype, material_integrals.device
    params = params.to(device)
    energies = physics.energies(dtype=dtype, device=device)
    counts = _tube_spectrum(params.kv.to(dtype), energies, physics.energy_bin_kev, params.filtration_al_mm.to(dtype),
                            params.filtration_cu_mm.to(dtype))  # (B, E)
    weights = signal_weights(counts, detector_response(energies, params.detector_csi_mm))
    table = mass_attenuation(physics.materials, energies)  # (M, E)
    primary = polychromatic_intensity(material_integrals, weights, table)
    water = weights @ mass_attenuation(("water",), energies)[0]  # (B,)
    thickness = water_equivalent_thickness(material_integrals, effective_mass_attenuation(weights, table), water)
    scatter = scatter_signal(primary, thickness, scale=params.scatter, air_gap_mm=params.air_gap_mm,
                             pixel_spacing=pixel_spacing)
    grid = params.grid.to(dtype)
    primary_share = 1.0 + grid * (physics.grid_primary_transmission - 1.0)  # (B,)
    scatter_share = 1.0 + grid * (physics.grid_scatter_transmission - 1.0)
    per_sample = (-1, 1, 1, 1, 1)
    dose = params.dose.to(dtype)
    expected = dose.reshape(per_sample) * (primary * primary_share.reshape(per_sample)
                                           + scatter * scatter_share.reshape(per_sample))
    seed = params.noise_seed.to(torch.int64)
    quanta = quantum_noise(expected, seed, mode=noise, generator=generator)
    signal = gaussian_blur(quanta, params.blur_mm, pixel_spacing=pixel_spacing,
                           radius=physics.blur_radius(pixel_spacing))
    if noise != "none":
        signal = electronic_noise(signal, params.electronic_noise, seed, generator=generator)
    log = log_normalise(signal, dose * primary_share)
    image = process(log, pixel_spacing=pixel_spacing, display=display)
    return {"primary": primary, "scatter": scatter, "expected": expected, "signal": signal, "log": log,
            "image": image}


def radiograph(material_integrals: Tensor, params: PhysicsParams, *, pixel_spacing: float,
               generator: torch.Generator | None = None, noise: str = "gaussian",
               display: Display = PROCESSED_RADIOGRAPH) -> Tensor:
    """Displayed radiographs from per-material line integrals: spectrum, transmission, scatter, detector, noise,
    processing.

    Args:
        material_integrals: ``(B, V, M, H, W)`` g/cm^2 of the ``M`` materials of ``params.physics.materials``
            along every ray (:func:`~onthefly.physics.render_materials`).
        params: ``(B,)`` physics of each sample (:meth:`Physics.draw`).
        pixel_spacing: detector pixel size, mm.
        generator: draws the noise when given (eager use); ``None`` (the default, and what ``torch.compile``
            needs): counter-based noise keyed by ``params.noise_seed``, a pure function of the parameters.
        noise: ``"gaussian"`` (reparameterised, differentiable), ``"poisson"`` (exact, for evaluation) or
            ``"none"`` (the expected image).
        display: how the log-normalised image is shown (default:
            :data:`~onthefly.physics.processing.PROCESSED_RADIOGRAPH`).

    Returns:
        ``(B, V, 1, H, W)`` in ``[0, 1]``: dense structures bright.

    Example:
        >>> from onthefly.physics import Physics, radiograph
        >>> params = Physics(kv=80.0, dose=1e4).draw(2, torch.Generator().manual_seed(0))
        >>> lines = torch.rand(2, 3, 3, 16, 16) * 10                   # (B, V, M, H, W) g/cm^2
        >>> radiograph(lines, params, pixel_spacing=2.0).shape
        torch.Size([2, 3, 1, 16, 16])
    """
    return radiograph_stages(material_integrals, params, pixel_spacing=pixel_spacing, generator=generator,
                             noise=noise, display=display)["image"]
