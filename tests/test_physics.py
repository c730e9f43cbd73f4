"""Radiograph physics (src/onthefly/physics/): each model against an outside reference, gradients, checks.

References: NIST's tabulated mass attenuation and energy-absorption coefficients (Hubbell and Seltzer 1995,
typed in below), IEC 61267's RQR half-value layers, the analytic Beer-Lambert limit, a float64 numpy
integration of the shipped table, Poisson statistics, and scatter-to-primary ratios of water slabs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onthefly import CArm, Volume, VolumeBatch, render
from onthefly.physics import (
    BODY_MATERIALS,
    RQR_HALF_VALUE_LAYERS_MM_AL,
    Physics,
    PhysicsParams,
    half_value_layer,
    hu_to_density,
    mass_attenuation,
    mass_energy_absorption,
    material_densities,
    polychromatic_intensity,
    radiograph,
    radiograph_stages,
    render_materials,
    tube_spectrum,
)
from onthefly.physics.detector import gaussian_blur, standard_normal
from onthefly.physics.scatter import REFERENCE_SPR, scatter_signal
from onthefly.physics.spectrum import _tube_spectrum, energy_bins
from onthefly.physics.transmission import detector_response, signal_weights
from onthefly.projector import render_channels

TABLE = Path(__file__).resolve().parents[1] / "src" / "onthefly" / "physics" / "attenuation.json"

# NIST X-ray mass attenuation coefficients (Hubbell and Seltzer, NISTIR 5632), keV: (mu/rho, mu_en/rho) cm^2/g.
NIST = {
    "air": {20: (0.7779, 0.5389), 30: (0.3538, 0.1537), 40: (0.2485, 0.06833), 50: (0.2080, 0.04098),
            60: (0.1875, 0.03041), 80: (0.1662, 0.02407), 100: (0.1541, 0.02325), 150: (0.1356, 0.02496)},
    "water": {20: (0.8096, 0.5503), 30: (0.3756, 0.1557), 40: (0.2683, 0.06947), 50: (0.2269, 0.04223),
              60: (0.2059, 0.03190), 80: (0.1837, 0.02597), 100: (0.1707, 0.02546), 150: (0.1505, 0.02764)},
    "aluminium": {20: (3.441, None), 30: (1.128, None), 40: (0.5685, None), 60: (0.2778, None),
                  80: (0.2018, None), 100: (0.1704, None), 150: (0.1378, None)},
}


def fixed_params(batch_size: int = 1, **fields) -> PhysicsParams:
    """Parameters with every field fixed (``Physics(**fields)`` drawn on a seeded generator)."""
    return Physics(**fields).draw(batch_size, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("material", sorted(NIST))
def test_attenuation_table_matches_nist(material):
    energies = torch.tensor(sorted(NIST[material]), dtype=torch.float64)
    mu = mass_attenuation([material], energies)[0]
    mu_en = mass_energy_absorption([material], energies)[0]
    for index, energy in enumerate(sorted(NIST[material])):
        expected_mu, expected_mu_en = NIST[material][energy]
        assert float(mu[index]) == pytest.approx(expected_mu, rel=5e-3)
        if expected_mu_en is not None:
            assert float(mu_en[index]) == pytest.approx(expected_mu_en, rel=2e-2)


def test_table_names_its_source_and_generator():
    table = json.loads(TABLE.read_text())
    assert "xraydb" in table["source"] and table["xraydb_version"] and table["generator"].endswith(".py")
    assert (TABLE.parents[3] / table["generator"]).exists()
    assert table["energy_kev"] == [float(e) for e in range(1, 151)]


# ---------------------------------------------------------------------------------------------- materials


def test_convention_density_follows_schneider_2000():
    hu = torch.tensor([-1000.0, -98.0, 14.0, 100.0, 1600.0, 3000.0])
    torch.testing.assert_close(hu_to_density(hu), torch.tensor([0.00121, 0.93, 1.03, 1.1199, 1.9642, 2.8]))
    assert float(hu_to_density(torch.tensor(-1100.0))) == 0.0


def test_material_fractions_split_the_density_smoothly():
    hu = torch.linspace(-1100, 2500, 721).reshape(1, 1, 1, 1, -1)
    densities = material_densities(hu)
    torch.testing.assert_close(densities.sum(1), hu_to_density(hu[:, 0]), rtol=1e-6, atol=1e-7)
    assert bool((densities >= 0).all())
    air, tissue, bone = densities[0, :, 0, 0]
    assert float(bone[hu[0, 0, 0, 0] <= 100].abs().max()) == 0 and float(tissue[hu[0, 0, 0, 0] >= 1500].max()) == 0
    assert float(air[hu[0, 0, 0, 0] >= -900].max()) == 0


def test_labels_assign_materials():
    hu = torch.tensor([40.0, 40.0, 1200.0]).reshape(1, 1, 1, 1, 3)
    labels = torch.tensor([0, 7, 0]).reshape(1, 1, 1, 1, 3)
    densities = material_densities(hu, labels=labels, label_materials={7: "bone"})
    assert float(densities[0, 2, 0, 0, 1]) == pytest.approx(float(hu_to_density(torch.tensor(40.0))))
    assert float(densities[0, 1, 0, 0, 1]) == 0.0 and float(densities[0, 1, 0, 0, 0]) > 1.0
    with pytest.raises(ValueError, match="label_materials"):
        material_densities(hu, labels=labels, label_materials={7: "steel"})


def test_per_material_render_equals_single_material_renders(make_phantom_hu):
    volume = Volume.from_tensor(make_phantom_hu((12, 11, 10), seed=3), spacing=(2.0, 2.5, 3.0))
    carm = CArm(alpha=torch.tensor([0.3, 1.9]), beta=0.2, sid=300.0, sdd=450.0, height=10, width=9, pixel_spacing=3.0)
    lines = render_materials(volume, carm)
    assert lines.shape == (1, 2, 3, 10, 9)
    batch = VolumeBatch.from_volumes([volume])
    densities = material_densities(1000.0 * (batch.attenuation / batch.mu_water - 1.0))
    for method in ("trilinear", "siddon"):
        together = render_channels(densities, batch.affine, carm, method=method)
        for channel in range(3):
            alone = render_channels(densities[:, channel:channel + 1], batch.affine, carm, method=method)
            torch.testing.assert_close(together[:, :, channel:channel + 1], alone, rtol=1e-6, atol=1e-6)
        total = render(VolumeBatch(attenuation=densities.sum(1, keepdim=True), affine=batch.affine), carm,
                       method=method)
        torch.testing.assert_close(together.sum(2, keepdim=True), total, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- spectrum


def test_rqr_half_value_layers_within_ten_percent():
    """IEC 61267 RQR 2-10 with the one fitted total filtration (TOTAL_FILTRATION_AL_MM)."""
    kv = torch.tensor(list(RQR_HALF_VALUE_LAYERS_MM_AL), dtype=torch.float64)
    expected = torch.tensor(list(RQR_HALF_VALUE_LAYERS_MM_AL.values()), dtype=torch.float64)
    computed = half_value_layer(kv)
    error = computed / expected - 1.0
    assert float(error.abs().max()) < 0.10, dict(zip(kv.tolist(), error.tolist()))


def test_spectrum_ends_at_the_tube_voltage_and_has_k_lines_above_the_edge():
    energies, counts = tube_spectrum([60.0, 100.0], bin_width_kev=1.0)
    torch.testing.assert_close(counts.sum(-1), torch.ones(2, dtype=torch.float64))
    assert float(counts[0, energies > 60].sum()) == 0.0 and float(counts[1, energies > 100].sum()) == 0.0
    ka1 = int(torch.argmin((energies - 59.3).abs()))
    assert float(counts[1, ka1]) > 2 * float(counts[1, ka1 + 3])  # a K-alpha peak at 100 kV
    assert float(counts[0, ka1]) < 1.5 * float(counts[0, ka1 - 3])  # none below the 69.5 keV edge
    assert float(half_value_layer(80.0, filtration_cu_mm=0.1)[0]) > float(half_value_layer(80.0)[0])


# ---------------------------------------------------------------------------------------------- transmission


def test_monochromatic_limit_is_beer_lambert(make_phantom_hu):
    """One bin and a flat detector: exp(-line integral), the line integral of mu = (mu/rho) * density."""
    volume = Volume.from_tensor(make_phantom_hu((10, 10, 10), seed=1), spacing=2.0)
    batch = VolumeBatch.from_volumes([volume])
    densities = material_densities(1000.0 * (batch.attenuation / batch.mu_water - 1.0))
    carm = CArm(alpha=torch.tensor([0.2, 1.3]), sid=300.0, sdd=450.0, height=8, pixel_spacing=4.0)
    lines = 0.1 * render_channels(densities, batch.affine, carm)  # g/cm^2
    table = mass_attenuation(BODY_MATERIALS, torch.tensor([60.0]))  # (3, 1) cm^2/g
    intensity = polychromatic_intensity(lines, torch.ones(1, 1), table)
    attenuation = (densities * table[:, 0].reshape(1, 3, 1, 1, 1)).sum(1, keepdim=True) / 10.0  # 1/mm
    line_integral = render(VolumeBatch(attenuation=attenuation, affine=batch.affine), carm)
    torch.testing.assert_close(intensity, torch.exp(-line_integral), rtol=2e-6, atol=1e-7)


def test_beam_hardening_matches_a_float64_integration_of_the_table():
    physics = Physics(kv=80.0, materials=("water",), energy_bin_kev=1.0)
    params = physics.draw(1, torch.Generator().manual_seed(0))
    energies = physics.energies(dtype=torch.float64)
    counts = _tube_spectrum(params.kv.double(), energies, 1.0, params.filtration_al_mm.double(),
                            params.filtration_cu_mm.double())
    weights = signal_weights(counts, detector_response(energies, params.detector_csi_mm.double()))
    thickness = torch.tensor([1.0, 5.0, 10.0, 20.0, 30.0], dtype=torch.float64)  # cm of water = g/cm^2
    lines = thickness.reshape(1, 1, 1, 1, -1)
    intensity = polychromatic_intensity(lines, weights, mass_attenuation(["water"], energies))[0, 0, 0, 0]
    effective = -torch.log(intensity) / thickness
    assert bool((effective[1:] < effective[:-1]).all())  # the beam hardens
    assert float(effective[0] / effective[-1]) > 1.1
    # numpy, float64: the same table interpolated log-log, the same weights
    table = json.loads(TABLE.read_text())
    grid = np.array(table["energy_kev"])
    mu = np.exp(np.interp(np.log(energies.numpy()), np.log(grid),
                          np.log(table["materials"]["water"]["mass_attenuation_cm2_g"])))
    reference = (weights.numpy()[0][None] * np.exp(-mu[None] * thickness.numpy()[:, None])).sum(1)
    np.testing.assert_allclose(intensity.numpy(), reference, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_flat_field_variance_equals_mean(noise):
    params = fixed_params(2, kv=70.0, dose=5000.0, blur_mm=0.0, electronic_noise=0.0, scatter=False)
    lines = torch.zeros(2, 2, 3, 256, 256)  # 65,536 pixels a view: the ratio's standard error is 0.6 %
    signal = radiograph_stages(lines, params, pixel_spacing=1.0, noise=noise)["signal"]
    ratio = signal.var(dim=(-1, -2)) / signal.mean(dim=(-1, -2))
    assert float((ratio - 1).abs().max()) < 0.02, ratio.flatten().tolist()
    assert float(signal.mean()) == pytest.approx(5000.0, rel=1e-3)


def test_counter_based_noise_is_standard_normal_and_keyed_by_the_seed():
    seed = torch.tensor([1, 2**40 + 7])
    samples = standard_normal(torch.Size([2, 200_000]), seed, stream=0)
    assert abs(float(samples.mean())) < 0.01 and float(samples.std()) == pytest.approx(1.0, abs=0.01)
    assert float(torch.corrcoef(samples)[0, 1]) < 0.01
    assert torch.equal(samples, standard_normal(torch.Size([2, 200_000]), seed, stream=0))
    other = standard_normal(torch.Size([2, 200_000]), seed, stream=1)
    assert abs(float((samples * other).mean())) < 0.01


def test_blur_of_zero_width_is_the_identity_and_blur_keeps_the_mean():
    images = torch.rand(2, 1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    same = gaussian_blur(images, torch.zeros(2), pixel_spacing=1.0, radius=3)
    torch.testing.assert_close(same, images)
    blurred = gaussian_blur(images, torch.tensor([0.0, 2.0]), pixel_spacing=1.0, radius=8)
    assert float(blurred[1].std()) < 0.6 * float(images[1].std())
    torch.testing.assert_close(blurred[0], images[0])


# ---------------------------------------------------------------------------------------------- scatter


def slab_spr(thickness_cm: float, *, kv: float = 80.0, grid: bool = False, air_gap_mm: float = 0.0) -> float:
    """SPR at the centre of a 30 x 30 cm^2 field (60 x 60 pixels of 5 mm) behind a water slab."""
    params = fixed_params(kv=kv, materials=("water",), grid=grid, air_gap_mm=air_gap_mm)
    lines = torch.full((1, 1, 1, 60, 60), float(thickness_cm), dtype=torch.float64)
    stages = radiograph_stages(lines, params, pixel_spacing=5.0, noise="none")
    physics = params.physics
    primary = stages["primary"][0, 0, 0, 30, 30] * (physics.grid_primary_transmission if grid else 1.0)
    scatter = stages["scatter"][0, 0, 0, 30, 30] * (physics.grid_scatter_transmission if grid else 1.0)
    return float(scatter / primary)


@pytest.mark.parametrize("kv", [70.0, 120.0])
def test_scatter_to_primary_ratio_of_water_slabs_within_thirty_percent(kv):
    for thickness, expected in REFERENCE_SPR.items():
        assert slab_spr(thickness, kv=kv) == pytest.approx(expected, rel=0.30), thickness


def test_grid_and_air_gap_lower_the_scatter_to_primary_ratio():
    for thickness in (10.0, 20.0, 30.0):
        plain = slab_spr(thickness)
        assert slab_spr(thickness, grid=True) < 0.25 * plain
        assert slab_spr(thickness, air_gap_mm=100.0) < 0.8 * plain
        assert slab_spr(thickness, air_gap_mm=200.0) < slab_spr(thickness, air_gap_mm=100.0)
    assert slab_spr(20.0) > slab_spr(10.0)


# ---------------------------------------------------------------------------------------------- gradients


def test_gradients_are_exact_in_float64():
    generator = torch.Generator().manual_seed(0)
    hu = torch.tensor([-980.0, -500.0, 40.0, 300.0, 900.0, 2000.0], dtype=torch.float64).reshape(1, 1, 1, 2, 3)
    torch.autograd.gradcheck(lambda h: material_densities(h), (hu.requires_grad_(),))

    energies = energy_bins(10.0, 120.0, dtype=torch.float64)
    kv = torch.tensor([65.0, 103.0], dtype=torch.float64, requires_grad=True)
    aluminium = torch.tensor([2.5, 3.5], dtype=torch.float64, requires_grad=True)
    copper = torch.tensor([0.0, 0.1], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda k, a, c: _tube_spectrum(k, energies, 10.0, a, c), (kv, aluminium, copper))

    lines = (5 * torch.rand(1, 2, 3, 3, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    weights = torch.softmax(torch.rand(1, 4, generator=generator, dtype=torch.float64), -1)
    table = mass_attenuation(BODY_MATERIALS, torch.tensor([30.0, 50.0, 70.0, 90.0], dtype=torch.float64))
    torch.autograd.gradcheck(lambda x: polychromatic_intensity(x, weights, table), (lines,))

    primary = torch.rand(1, 1, 1, 5, 6, generator=generator, dtype=torch.float64).requires_grad_()
    thickness = (20 * torch.rand(1, 1, 1, 5, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    gap = torch.tensor([50.0], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p, t, g: scatter_signal(p, t, scale=torch.ones(1, dtype=torch.float64),
                                                            air_gap_mm=g, pixel_spacing=4.0),
                             (primary, thickness, gap))

    images = torch.rand(1, 1, 1, 6, 6, generator=generator, dtype=torch.float64).requires_grad_()
    blur = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, s: gaussian_blur(x, s, pixel_spacing=1.0, radius=3), (images, blur))


def test_radiograph_is_differentiable_in_the_line_integrals():
    params = fixed_params(2, kv=80.0, dose=1e4, grid=True, air_gap_mm=50.0)
    lines = (3 * torch.rand(2, 1, 3, 24, 24, generator=torch.Generator().manual_seed(1))).requires_grad_()
    image = radiograph(lines, params, pixel_spacing=2.0)
    (gradient,) = torch.autograd.grad((image * torch.linspace(0, 1, 24)).sum(), lines)
    assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------- the entry point


def test_radiograph_shape_range_and_batch_equals_loop():
    physics = Physics(kv=(60.0, 110.0), dose=(3e3, 3e4), grid=0.5, air_gap_mm=(0.0, 100.0))
    params = physics.draw(3, torch.Generator().manual_seed(4))
    lines = 4 * torch.rand(3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images = radiograph(lines, params, pixel_spacing=2.0)
    assert images.shape == (3, 2, 1, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    for index in range(3):
        one = dataclasses.replace(params, **{name: getattr(params, name)[index:index + 1] for name in (
            "kv", "filtration_al_mm", "filtration_cu_mm", "dose", "scatter", "grid", "air_gap_mm", "blur_mm",
            "electronic_noise", "detector_csi_mm", "noise_seed")})
        torch.testing.assert_close(radiograph(lines[index:index + 1], one, pixel_spacing=2.0),
                                   images[index:index + 1], rtol=1e-5, atol=1e-5)


def test_draw_is_seeded_in_range_and_moves():
    physics = Physics(kv=(50.0, 120.0), dose=(1e3, 1e4), grid=0.3)
    first = physics.draw(64, torch.Generator().manual_seed(7))
    again = physics.draw(64, torch.Generator().manual_seed(7))
    assert torch.equal(first.kv, again.kv) and torch.equal(first.noise_seed, again.noise_seed)
    assert float(first.kv.min()) >= 50 and float(first.kv.max()) <= 120 and first.kv.dtype == torch.float32
    assert set(first.grid.tolist()) <= {0.0, 1.0} and 0 < float(first.grid.mean()) < 1
    assert first.to("cpu").kv.device.type == "cpu" and first.batch_size == 64
    assert physics.range("kv") == (50.0, 120.0) and Physics(kv=80.0).range("kv") == (80.0, 80.0)


def test_radiograph_has_no_graph_breaks():
    params = fixed_params(2, kv=(60.0, 100.0), grid=0.5)
    lines = torch.rand(2, 2, 3, 16, 16)
    explanation = torch._dynamo.explain(radiograph)(lines, params, pixel_spacing=2.0)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    carm = CArm(alpha=torch.tensor([0.2, 1.0]), sid=300.0, sdd=450.0, height=8, pixel_spacing=4.0)
    values = torch.rand(1, 3, 6, 6, 6)
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))[None]
    explanation = torch._dynamo.explain(render_channels)(values, affine, carm)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.slow
def test_compiled_radiograph_equals_eager():
    params = fixed_params(2, kv=(60.0, 100.0), grid=0.5)
    lines = 3 * torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eager = radiograph(lines, params, pixel_spacing=2.0)
    compiled = torch.compile(radiograph, fullgraph=True)(lines, params, pixel_spacing=2.0)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fields, error, name", [
    (dict(kv=30.0), ValueError, "kv"),
    (dict(kv=(60.0, 160.0)), ValueError, "kv"),
    (dict(kv=(100.0, 60.0)), ValueError, "kv"),
    (dict(filtration_al_mm=-1.0), ValueError, "filtration_al_mm"),
    (dict(filtration_cu_mm=(-0.1, 0.2)), ValueError, "filtration_cu_mm"),
    (dict(dose=-5.0), ValueError, "dose"),
    (dict(dose=0.0), ValueError, "dose"),
    (dict(scatter="yes"), TypeError, "scatter"),
    (dict(grid=1.5), ValueError, "grid"),
    (dict(blur_mm=-0.1), ValueError, "blur_mm"),
    (dict(electronic_noise=-1.0), ValueError, "electronic_noise"),
    (dict(detector_csi_mm=0.0), ValueError, "detector_csi_mm"),
    (dict(materials=("air", "unobtainium")), ValueError, "materials"),
    (dict(materials="bone"), TypeError, "materials"),
    (dict(energy_bin_kev=(1.0, 5.0)), TypeError, "energy_bin_kev"),
    (dict(energy_bin_kev=0.1), ValueError, "energy_bin_kev"),
    (dict(kv=(40.0, 80.0), energy_bin_kev=20.0, lowest_energy_kev=25.0), ValueError, "energy_bin_kev"),
    (dict(grid_scatter_transmission=0.0), ValueError, "grid_scatter_transmission"),
])
def test_physics_refuses_bad_fields_by_name(fields, error, name):
    with pytest.raises(error, match=name):
        Physics(**fields)


def test_entry_points_refuse_bad_input_by_name():
    params = fixed_params(2)
    lines = torch.rand(2, 1, 3, 8, 8)
    with pytest.raises(ValueError, match="material_integrals"):
        radiograph(torch.rand(2, 1, 2, 8, 8), params, pixel_spacing=1.0)
    with pytest.raises(ValueError, match="material_integrals"):
        radiograph(torch.rand(3, 1, 3, 8, 8), params, pixel_spacing=1.0)
    with pytest.raises(ValueError, match="noise"):
        radiograph(lines, params, pixel_spacing=1.0, noise="speckle")
    with pytest.raises(ValueError, match="pixel_spacing"):
        radiograph(lines, params, pixel_spacing=0.0)
    with pytest.raises(TypeError, match="params"):
        radiograph(lines, {"kv": 80}, pixel_spacing=1.0)
    with pytest.raises(TypeError, match="generator"):
        radiograph(lines, params, pixel_spacing=1.0, generator=3)
    with pytest.raises(ValueError, match="kv"):
        half_value_layer(200.0)
    with pytest.raises(ValueError, match="filtration_al_mm"):
        half_value_layer(80.0, filtration_al_mm=-1.0)
    with pytest.raises(ValueError, match="materials"):
        mass_attenuation(["kryptonite"], torch.tensor([50.0]))
    affine = torch.eye(4, dtype=torch.float64)[None]
    carm = CArm(alpha=0.0, sid=300.0, sdd=450.0, height=4, pixel_spacing=4.0)
    with pytest.raises(ValueError, match="values"):
        render_channels(torch.full((1, 2, 3, 3, 3), float("nan")), affine, carm)
    with pytest.raises(ValueError, match="values"):
        render_channels(torch.rand(1, 3, 3, 3), affine, carm)
    with pytest.raises(ValueError, match="batch_size"):
        Physics().draw(0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        Physics().draw(2, None)
