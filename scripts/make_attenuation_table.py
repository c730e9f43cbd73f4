"""Write ``src/onthefly/physics/attenuation.json``: X-ray interaction data for the radiograph physics.

Run: ``.venv/bin/pip install -c constraints.txt xraydb`` then
``.venv/bin/python scripts/make_attenuation_table.py``. The library reads the
JSON file it writes and never imports xraydb.

Source: the Elam, Ravel and Sieber (2002) tables of xraydb (Radiat. Phys.
Chem. 63:121; public domain): photoabsorption (Scofield's cross-sections, as
in NIST XCOM), coherent and incoherent scattering per element, per keV. Mixtures
(ICRU-44 soft tissue and cortical bone, dry air, CsI) are sums weighted by mass
fraction (compositions and densities as NIST lists them for its X-ray
attenuation tables, Hubbell and Seltzer 1995, NISTIR 5632).

Mass energy-absorption coefficients ``mu_en / rho`` (for air kerma and the
energy a scintillator absorbs) are built from the same cross-sections:

    mu_en = photo * (1 - fluorescence energy that escapes / E) + incoherent * (Klein-Nishina mean energy
            transfer fraction at E)

with K- and L3-shell fluorescence (yields, jump ratios and line energies from
xraydb) and coherent scattering depositing nothing. This is the usual
decomposition of mu_en (Attix 1986, ch. 7); it leaves out bremsstrahlung of the
secondary electrons (below 0.1 % in this energy range for these materials).
tests/test_physics.py checks it against NIST's tabulated values for air and water.

The tungsten anode's K lines (energies and relative intensities, xraydb) are
stored for the tube spectrum.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "onthefly" / "physics" / "attenuation.json"

ENERGIES_KEV = np.arange(1.0, 151.0)  # 1 to 150 keV in 1 keV steps

# Mass fractions and densities (g/cm^3) as NIST lists them (Hubbell and Seltzer, NISTIR 5632, table 2).
MATERIALS = {
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0),
    "soft_tissue": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                     "Cl": 0.002, "K": 0.003}, 1.06),  # ICRU-44 soft tissue
    "bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103, "S": 0.003,
              "Ca": 0.225}, 1.92),  # ICRU-44 cortical bone
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 0.001205),  # dry, near sea level
    "aluminium": ({"Al": 1.0}, 2.699),
    "copper": ({"Cu": 1.0}, 8.96),
    "csi": ({"Cs": 0.511549, "I": 0.488451}, 4.51),
    "tungsten": ({"W": 1.0}, 19.3),
}

ELECTRON_REST_KEV = 510.99895


def klein_nishina_transfer_fraction(energy_kev: np.ndarray) -> np.ndarray:
    """Mean share of a Compton-scattered photon's energy given to the electron (free-electron Klein-Nishina),
    by numerical integration over the scattering angle."""
    cosines = np.linspace(-1.0, 1.0, 20001)
    k = energy_kev[:, None] / ELECTRON_REST_KEV
    ratio = 1.0 / (1.0 + k * (1.0 - cosines[None]))  # E'/E
    differential = ratio**2 * (ratio + 1.0 / ratio - (1.0 - cosines[None] ** 2))  # d sigma / d cos, up to a constant
    total = np.trapezoid(differential, cosines, axis=1)
    transferred = np.trapezoid(differential * (1.0 - ratio), cosines, axis=1)
    return transferred / total


def _mean_line_energy(xraydb, element: str, shell: str) -> float:
    lines = xraydb.xray_lines(element, shell)
    weights = np.array([line.intensity for line in lines.values()])
    energies = np.array([line.energy for line in lines.values()]) / 1000.0
    return float((weights * energies).sum() / weights.sum()) if weights.sum() > 0 else 0.0


def element_coefficients(xraydb, element: str, energy_kev: np.ndarray) -> dict[str, np.ndarray]:
    """cm^2/g: total attenuation and energy absorption of one element."""
    electron_volts = energy_kev * 1000.0
    photo = xraydb.mu_elam(element, electron_volts, kind="photo")
    incoherent = xraydb.mu_elam(element, electron_volts, kind="incoh")
    coherent = xraydb.mu_elam(element, electron_volts, kind="coh")
    escaping = np.zeros_like(energy_kev)  # fluorescence energy per photoabsorption, keV
    remaining = np.ones_like(energy_kev)  # share of photoabsorptions not yet assigned to a shell
    for shell in ("K", "L3"):
        edge = xraydb.xray_edge(element, shell)
        if edge is None or edge.energy <= 0:
            continue
        above = energy_kev * 1000.0 > edge.energy
        share = np.where(above, remaining * (edge.jump_ratio - 1.0) / edge.jump_ratio, 0.0)
        escaping += share * edge.fyield * _mean_line_energy(xraydb, element, shell)
        remaining = remaining - share
    energy_absorption = photo * (1.0 - escaping / energy_kev) + incoherent * klein_nishina_transfer_fraction(energy_kev)
    return {"total": photo + incoherent + coherent, "energy_absorption": energy_absorption}


def build_table() -> dict:
    import xraydb

    materials = {}
    for name, (fractions, density) in MATERIALS.items():
        total = np.zeros_like(ENERGIES_KEV)
        absorption = np.zeros_like(ENERGIES_KEV)
        for element, fraction in fractions.items():
            coefficients = element_coefficients(xraydb, element, ENERGIES_KEV)
            total += fraction * coefficients["total"]
            absorption += fraction * coefficients["energy_absorption"]
        materials[name] = {
            "density_g_cm3": density,
            "mass_fractions": fractions,
            "mass_attenuation_cm2_g": [float(f"{value:.6g}") for value in total],
            "mass_energy_absorption_cm2_g": [float(f"{value:.6g}") for value in absorption],
        }
    lines = xraydb.xray_lines("W", "K")
    edge = xraydb.xray_edge("W", "K")
    return {
        "description": "Mass attenuation and energy-absorption coefficients (cm^2/g) per keV; tungsten K lines.",
        "source": "Elam, Ravel and Sieber (2002) X-ray tables through xraydb (public domain); compositions and "
                  "densities as NIST lists them (Hubbell and Seltzer, NISTIR 5632); mu_en from photoabsorption with "
                  "K/L3 fluorescence escape and Klein-Nishina energy transfer of incoherent scattering.",
        "generator": "scripts/make_attenuation_table.py",
        "xraydb_version": xraydb.__version__,
        "date": datetime.date.today().isoformat(),
        "energy_kev": [float(e) for e in ENERGIES_KEV],
        "materials": materials,
        "tungsten_k_edge_kev": edge.energy / 1000.0,
        "tungsten_k_fluorescence_yield": edge.fyield,
        "tungsten_k_lines": {name: {"energy_kev": line.energy / 1000.0, "relative_intensity": line.intensity}
                             for name, line in lines.items() if line.intensity > 1e-3},
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(OUTPUT), help="where to write the JSON table")
    args = parser.parse_args(argv)
    table = build_table()
    Path(args.output).write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.output} (xraydb {table['xraydb_version']})")
    return Path(args.output)


if __name__ == "__main__":
    main()
