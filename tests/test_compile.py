"""The hot path under torch.compile: no graph breaks at fixed shapes, compiled equals eager, one compile.

``torch._dynamo.explain`` traces a call and counts graph breaks (each one a
host synchronisation on a GPU and a barrier to fusion). Compiling is slow on
a CPU (tens of seconds to minutes per function), so the compiled-versus-eager
comparisons are marked slow; the graph-break counts are not.
"""

from __future__ import annotations

import math

import pytest
import torch

from onthefly import CArm, Volume, VolumeBatch, render
from onthefly.correspondence import WeightIntegral, patch_correspondence
from onthefly.footprints import footprint_window


@pytest.fixture(scope="module")
def tiny_batch(make_phantom_hu) -> VolumeBatch:
    volumes = [Volume.from_tensor(make_phantom_hu((10, 9, 8), seed=seed), spacing=(2.0, 2.5, 3.0)) for seed in (1, 2)]
    return VolumeBatch.from_volumes(volumes)


@pytest.fixture(scope="module")
def tiny_carm() -> CArm:
    return CArm(alpha=torch.tensor([[0.3, 2.0], [1.1, 4.2]]), beta=torch.tensor([[0.2], [-0.25]]), gamma=0.1,
                sid=300.0, sdd=450.0, height=12, width=8, pixel_spacing=3.0)


@pytest.fixture(scope="module")
def table(make_phantom_hu) -> WeightIntegral:
    return WeightIntegral([Volume.from_tensor(make_phantom_hu((20, 20, 20), seed=seed), spacing=2.0) for seed in (3, 4)])


CROPS = dict(volume_index=torch.tensor([0, 1]), start=torch.tensor([[2, 0, 3], [0, 4, 1]]),
             stop=torch.tensor([[16, 16, 15], [16, 16, 16]]), factor=torch.full((2, 3), 4))
GRID = (4, 4, 4)  # ceil(16 / 4) coarse voxels per axis bounds every crop


def correspondence_path(table: WeightIntegral, carm: CArm, window: int, rays_per_patch=None, compile=False):
    """The sampler's correspondence path: pooled weights of crops from tables, then the matrix.
    ``rays_per_patch="separable"`` stands for the separable closed-form footprints."""
    pooled = table.pool(CROPS["volume_index"], CROPS["start"], CROPS["stop"], CROPS["factor"], grid_shape=GRID)
    footprint = "separable" if rays_per_patch == "separable" else "exact"
    rays = None if rays_per_patch == "separable" else rays_per_patch
    return patch_correspondence(pooled, carm, patch_size=4, window=window, rays_per_patch=rays, compile=compile,
                                footprint=footprint)


def window_of(table: WeightIntegral, carm: CArm) -> int:
    pooled = table.pool(CROPS["volume_index"], CROPS["start"], CROPS["stop"], CROPS["factor"], grid_shape=GRID)
    return footprint_window(carm, pooled.affine, GRID, 4)


@pytest.mark.parametrize("method", ["trilinear", "siddon"])
def test_render_has_no_graph_breaks(tiny_batch, tiny_carm, method):
    explanation = torch._dynamo.explain(render)(tiny_batch, tiny_carm, method=method)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("rays", [None, "separable", 2], ids=["exact", "separable", "sampled"])
def test_correspondence_path_has_no_graph_breaks(table, tiny_carm, rays):
    window = window_of(table, tiny_carm)
    explanation = torch._dynamo.explain(correspondence_path)(table, tiny_carm, window, rays)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_render_compile_flag_is_checked(tiny_batch, tiny_carm):
    with pytest.raises(TypeError, match="compile"):
        render(tiny_batch, tiny_carm, compile="yes")
    with pytest.raises(TypeError, match="compile"):
        patch_correspondence(tiny_batch, tiny_carm, patch_size=4, compile=1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["trilinear", "siddon"])
def test_compiled_render_equals_eager_and_compiles_once(tiny_batch, tiny_carm, method):
    from torch._dynamo.utils import counters

    eager = render(tiny_batch, tiny_carm, method=method)
    before = counters["stats"]["unique_graphs"]
    compiled = [render(tiny_batch, tiny_carm, method=method, compile=True) for _ in range(3)]
    assert counters["stats"]["unique_graphs"] - before == 1  # three calls at fixed shapes: one compile
    for image in compiled:  # compiled with fullgraph=True: a graph break would have raised
        torch.testing.assert_close(image, eager, rtol=1e-5, atol=1e-5)
    # A caller compiling render itself gets the same traced path: test_render_has_no_graph_breaks.


@pytest.mark.slow
def test_compiled_render_gradient_equals_eager(tiny_carm, make_phantom_hu):
    """Differentiable through the traced path too (w.r.t. the volume and the pose)."""
    attenuation = (0.02 + 0.01 * torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))).requires_grad_()
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))[None]
    affine[0, :3, 3] = -10.5
    sid = torch.tensor(300.0, requires_grad=True)

    def loss(compiled: bool):
        carm = CArm(alpha=torch.tensor([0.4, 2.2]), beta=0.2, sid=sid, sdd=450.0, height=8, pixel_spacing=4.0)
        return render(VolumeBatch(attenuation=attenuation, affine=affine), carm, compile=compiled).square().sum()

    eager = torch.autograd.grad(loss(False), (attenuation, sid))
    compiled = torch.autograd.grad(loss(True), (attenuation, sid))
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_correspondence_equals_eager(table, tiny_carm):
    """Exact footprints through ``compile=True`` (fullgraph: a graph break would raise). The sampled and separable
    footprints share its traced code but for their integrals, whose graphs test_correspondence_path_has_no_graph_breaks
    checks; compiling each once more would double this test's minute on a 2-core CPU."""
    window = window_of(table, tiny_carm)
    eager = correspondence_path(table, tiny_carm, window)
    assert float(eager.max()) > 0.5
    compiled = correspondence_path(table, tiny_carm, window, compile=True)
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=0)


def test_gpu_benchmark_smoke_run(tmp_path):
    """``benchmarks/gpu.py --device cpu --quick``: every row runs (or says why it is skipped) at tiny sizes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
    output = tmp_path / "gpu.json"
    completed = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    names = {row["name"] for row in rows}
    assert {"render eager float32", "render eager bfloat16", "correspondence from tables"} <= names
    assert {"training, batch in the step", "training, prefetched"} <= names
    for row in rows:
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            assert math.isfinite(row["seconds"]) and row["seconds"] > 0
        else:
            assert row["reason"]
    # Eager rows first, compiled last; the lines printed as rows finish name every row.
    modes = ["compiled" in row["name"] for row in rows]
    assert modes == sorted(modes)
    assert all(row["name"] in completed.stdout for row in rows)


def test_gpu_benchmark_skips_compiled_rows_past_its_budget(tmp_path):
    """``--budget-s 0``: every compiled row is skipped, saying why; the eager rows still run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
    output = tmp_path / "gpu.json"
    completed = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--compile", "--budget-s",
                                "0", "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    compiled = [row for row in rows if "compiled" in row["name"]]
    assert compiled and all(row["status"] == "skipped" and "--budget-s" in row["reason"] for row in compiled)
    assert any(row["status"] == "ok" for row in rows if "compiled" not in row["name"])
    refused = subprocess.run([sys.executable, str(script), "--device", "cpu", "--budget-s", "-1"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--budget-s" in refused.stderr


@pytest.mark.slow
def test_sampler_compile_option_equals_eager_and_compiles_once():
    from torch._dynamo.utils import counters

    from onthefly import DRRCorrespondenceSampler, Volume

    ct = Volume.from_tensor(torch.linspace(-1000.0, 800.0, 24**3).reshape(24, 24, 24), spacing=5.0)
    settings = dict(volumes=[ct], views=2, image_size=32, patch_size=16, crop_size=80.0, spacing=5.0, batch_size=2,
                    seed=1, min_tissue_fraction=0.0, min_projection_fraction=0.0, augmentation=None)
    eager, compiled = DRRCorrespondenceSampler(**settings), DRRCorrespondenceSampler(compile=True, **settings)
    assert compiled.config.fingerprint() == eager.config.fingerprint()  # how a batch is computed, not what it holds
    compiled.sample(0)
    before = counters["stats"]["unique_graphs"]
    for step in (1, 2):
        expected, got = eager.sample(step), compiled.sample(step)
        torch.testing.assert_close(got.images, expected.images, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.correspondence, expected.correspondence, atol=2e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] == before  # later batches reuse the first batch's compilations


def test_geometric_augmentation_has_no_graph_breaks():
    from onthefly.augment import _geometric, image_operation_maps

    images, correspondence = torch.rand(2, 2, 1, 16, 16), torch.rand(2, 32, 32)
    operation = torch.tensor([[1, 3], [0, 5]])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_geometric)(images, operation, correspondence, 4, image_operation_maps(16, 16),
                                                  image_operation_maps(4, 4))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_compiled_caller_of_render_and_correspondence_has_no_graph_breaks(table, tiny_carm):
    """A training step compiled as a whole (render, correspondence and a loss in one function): no graph break.
    The pooled weights and the window are host work done once outside."""
    window = window_of(table, tiny_carm)
    pooled = table.pool(CROPS["volume_index"], CROPS["start"], CROPS["stop"], CROPS["factor"], grid_shape=GRID)
    volume = VolumeBatch(attenuation=torch.rand(2, 1, 6, 6, 6) * 0.02,
                         affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64)).expand(2, 4, 4))

    def step(volume, pooled, carm):
        images = render(volume, carm)
        matrix = patch_correspondence(pooled, carm, patch_size=4, window=window)
        return images.mean() + (matrix - 0.5).square().mean()

    explanation = torch._dynamo.explain(step)(volume, pooled, tiny_carm)
    assert explanation.graph_break_count == 0, explanation.break_reasons
