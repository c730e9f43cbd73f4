"""The projector benchmark behind ``onthefly benchmark``: its set-up, rows, errors and input checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from onthefly import benchmark
from onthefly.benchmark import (
    BenchmarkSettings,
    benchmark_carm,
    benchmark_volumes,
    compile_available,
    format_report,
    run_benchmark,
)
from onthefly.checkpoint import strict_json

TINY = dict(views=2, image_size=16, repeats=1, warmup=0)


@pytest.fixture(scope="module")
def phantom_ct(make_phantom_hu):
    from onthefly import Volume

    return Volume.from_tensor(make_phantom_hu((24, 24, 30)), spacing=(4.0, 4.0, 5.0))


@pytest.mark.parametrize("changes, error, message", [
    (dict(views=0), ValueError, "views"),
    (dict(image_size=2.5), TypeError, "image_size"),
    (dict(batch=0), ValueError, "batch"),
    (dict(repeats=0), ValueError, "repeats"),
    (dict(warmup=-1), ValueError, "warmup"),
    (dict(crop_size=0.0), ValueError, "crop_size: expected a positive length in mm, got 0.0"),
    (dict(sid=900.0, sdd=800.0), ValueError, r"sdd: expected more than sid \(900.0 mm\), got 800.0 mm"),
    (dict(method="joseph"), ValueError, r"method: expected one of \['trilinear', 'siddon'\], got 'joseph'"),
    (dict(dtype="int8"), ValueError, "dtype: expected one of"),
    (dict(compile="yes"), TypeError, "compile: expected True or False"),
    (dict(device="gpu0"), ValueError, "device: expected cpu, cuda or cuda:N, got 'gpu0'"),
])
def test_settings_are_checked(changes, error, message):
    with pytest.raises(error, match=message):
        BenchmarkSettings(**changes)


def test_poses_and_detector_follow_the_reference_benchmark():
    settings = BenchmarkSettings(views=4, image_size=128)
    carm = benchmark_carm(settings)
    assert carm.batch_shape == (1, 4)
    torch.testing.assert_close(carm.alpha[0].double(), torch.arange(4, dtype=torch.float64) * math.pi / 2)
    torch.testing.assert_close(carm.beta[0].double(), 0.2 * torch.sin(carm.alpha[0].double()), atol=1e-6, rtol=0)
    assert settings.pixel_spacing == 4.0  # 512 mm across at any size


def test_crops_differ_fit_the_ct_and_are_centred(phantom_ct):
    crops = benchmark_volumes(phantom_ct, BenchmarkSettings(batch=3, crop_size=60.0))
    assert len(crops) == 3 and all(crop.shape == (15, 15, 12) for crop in crops)
    assert len({float(crop.hu.sum()) for crop in crops}) == 3  # different parts of the CT
    for crop in crops:
        torch.testing.assert_close(crop.center, torch.zeros(3, dtype=crop.center.dtype), atol=1e-9, rtol=0)
    (whole,) = benchmark_volumes(phantom_ct, BenchmarkSettings())
    assert whole.shape == phantom_ct.shape


def test_rows_report_speed_memory_and_error(phantom_ct):
    report = run_benchmark(phantom_ct, BenchmarkSettings(**TINY, error=True, batch=2, crop_size=80.0), progress=False)
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["library"] == "onthefly" and len(row["times_s"]) == 1
    assert row["drrs_per_s"] > 0 and math.isclose(row["ms_per_view"], 1000 * row["times_s"][0] / 4)
    assert row["process_peak_bytes"] > 0 and row["device_peak_bytes"] is None  # CPU
    assert 0 < row["relative_l1"] < 0.2  # trilinear against the exact Siddon line integrals, 4-5 mm voxels
    json.dumps(strict_json(report), allow_nan=False)
    table = format_report(report)
    assert "DRRs/s (min-max)" in table and "onthefly  trilinear  float32  2 x 2" in table and "Machine:" in table


def test_the_reference_method_has_no_error_and_dtype_is_honoured(phantom_ct):
    report = run_benchmark(phantom_ct, BenchmarkSettings(**TINY, method="siddon", error=True), progress=False)
    assert report["rows"][0]["relative_l1"] == 0.0
    report = run_benchmark(phantom_ct, BenchmarkSettings(**TINY, dtype="bfloat16", error=True), progress=False)
    assert report["rows"][0]["dtype"] == "bfloat16" and 0 < report["rows"][0]["relative_l1"] < 0.05


def test_unknown_libraries_and_unavailable_compile_are_refused(phantom_ct):
    with pytest.raises(ValueError, match=r"against: expected libraries from \['diffdrr'\], got \['astra'\]"):
        run_benchmark(phantom_ct, BenchmarkSettings(**TINY), against=["astra"], progress=False)
    with pytest.raises(TypeError, match="settings: expected BenchmarkSettings"):
        run_benchmark(phantom_ct, dict(TINY), progress=False)
    if not compile_available():
        with pytest.raises(ValueError, match="compile: not available"):
            run_benchmark(phantom_ct, BenchmarkSettings(**TINY, compile=True), progress=False)


@pytest.mark.slow
def test_diffdrr_renders_the_same_geometry(phantom_ct):
    """diffdrr's Siddon on the same crops and poses gives onthefly's exact line integrals."""
    pytest.importorskip("diffdrr")
    settings = BenchmarkSettings(views=3, image_size=24, repeats=1, warmup=0, error=True, batch=2, crop_size=80.0,
                                 method="siddon")
    report = run_benchmark(phantom_ct, settings, against=["diffdrr"], progress=False)
    ours, theirs = report["rows"]
    assert theirs["library"] == "diffdrr" and theirs["status"] == "ok" and ours["relative_l1"] == 0.0
    assert theirs["relative_l1"] < 1e-4, theirs["relative_l1"]


def test_diffdrr_rows_that_cannot_fit_are_skipped_not_run(phantom_ct, monkeypatch):
    pytest.importorskip("diffdrr")
    monkeypatch.setattr(benchmark, "_memory_available_bytes", lambda: int(1.2e9))
    report = run_benchmark(phantom_ct, BenchmarkSettings(**TINY), against=["diffdrr"], progress=False)
    skipped = report["rows"][1]
    assert skipped["status"] == "skipped" and "GB of memory available now; not run" in skipped["reason"]
    assert "skipped: estimated peak" in format_report(report)
