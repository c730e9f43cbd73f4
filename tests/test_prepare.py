"""The prepared CT cache: files and index, sources, resume, skipping, unreadable CTs, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onthefly import Volume
from onthefly.correspondence import voxel_weights
from onthefly.cli import main
from onthefly.sampling import cache_format, preparation
from onthefly.sampling.preparation import (
    MAX_BOX_VOXELS,
    WEIGHT_SCALE,
    PreparationSettings,
    expand_sources,
    prepare,
    read_index,
    weight_table,
)
from onthefly.sampling.grids import tissue_grid

SPACING = 2.0


def write_ct(folder: Path, name: str, hu: torch.Tensor, *, spacing=(1.5, 1.25, 1.0), labels: bool = False) -> Path:
    """A NIfTI CT (int16 HU, diagonal affine) and, with ``labels``, ``<name>_labels.nii.gz`` beside it."""
    affine = np.diag([*spacing, 1.0])
    path = folder / f"{name}.nii.gz"
    nib.Nifti1Image(hu.round().numpy().astype(np.int16), affine).to_filename(path)
    if labels:
        label_map = ((hu > -300).to(torch.uint8) + (hu > 300).to(torch.uint8)).numpy()
        nib.Nifti1Image(label_map, affine).to_filename(folder / f"{name}_labels.nii.gz")
    return path


@pytest.fixture
def ct_files(tmp_path, make_phantom_hu) -> list[Path]:
    """Three small NIfTI CTs of different shapes in ``tmp_path/in``."""
    folder = tmp_path / "in"
    folder.mkdir()
    shapes = [(20, 24, 28), (24, 20, 26), (22, 22, 30)]
    return [write_ct(folder, f"ct{i}", make_phantom_hu(shape, seed=i)) for i, shape in enumerate(shapes)]


def expected_volume(path: Path, labels: Path | None = None) -> Volume:
    """What preparation stores: the CT resampled to the cache's spacing, HU rounded."""
    volume = Volume.from_file(path, labels=labels).resample(SPACING)
    return Volume(hu=volume.hu.round(), affine=volume.affine, labels=volume.labels)


def test_prepared_files_hold_the_resampled_ct_and_its_tables(ct_files, tmp_path):
    report = prepare(ct_files, tmp_path / "cache", spacing=SPACING)
    assert report.prepared == [str(p) for p in ct_files] and not report.skipped and not report.failed
    index = read_index(tmp_path / "cache")
    assert index["settings"]["spacing"] == [SPACING] * 3
    for path, entry in zip(ct_files, index["cts"]):
        volume = expected_volume(path)
        assert entry["source"] == str(path) and entry["patient"] == str(path)
        assert entry["shape"] == list(volume.shape) and entry["label_names"] is None
        torch.testing.assert_close(torch.tensor(entry["affine"], dtype=torch.float64), volume.affine)
        torch.testing.assert_close(torch.tensor(entry["spacing"], dtype=torch.float64), volume.spacing)
        assert len(entry["content_hash"]) == 32
        files = {name: tmp_path / "cache" / record["path"] for name, record in entry["files"].items()}
        assert sorted(files) == ["hu", "tissue", "weights"]
        hu = np.load(files["hu"], mmap_mode="r")
        assert hu.dtype == np.int16 and torch.equal(torch.from_numpy(np.array(hu)).float(), volume.hu[0])
        block = PreparationSettings.create(SPACING).tissue_block
        tissue = F.avg_pool3d((volume.hu > -900).float()[None], block, ceil_mode=True)[0, 0]
        assert torch.equal(torch.from_numpy(np.load(files["tissue"])), tissue)
        weights = torch.round(voxel_weights(volume.hu[0]) * WEIGHT_SCALE).double()
        table = torch.from_numpy(np.load(files["weights"]).astype(np.float64))
        assert torch.equal(table[1:, 1:, 1:], weights.cumsum(0).cumsum(1).cumsum(2))
        assert bool((table[0] == 0).all() and (table[:, 0] == 0).all() and (table[:, :, 0] == 0).all())


def test_weight_table_box_sums_are_exact_modulo_two_to_the_32():
    hu = torch.full((70, 70, 70), 2000, dtype=torch.int16)  # every voxel weighs about 1: the table wraps
    table = weight_table(hu, weighting="soft", air_threshold_hu=-900.0).astype(np.int64)
    quantum = int(round(float(voxel_weights(torch.tensor(2000.0))) * WEIGHT_SCALE))
    assert table[-1, -1, -1] != 70**3 * quantum  # the full sum overflows 2**32 ...
    lo, hi = np.array([3, 1, 2]), np.array([67, 65, 66])  # ... a 64^3 box still comes out exactly
    corners = [int(table[i, j, k]) * (-1) ** int((i == lo[0]) + int(j == lo[1]) + int(k == lo[2]))
               for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
    assert 64**3 <= MAX_BOX_VOXELS
    assert (sum(corners) & 0xFFFFFFFF) == 64**3 * quantum


def test_labels_and_label_names_from_list_files_and_subjects(tmp_path, make_phantom_hu):
    import torchio as tio

    folder = tmp_path / "in"
    folder.mkdir()
    path = write_ct(folder, "a", make_phantom_hu((20, 22, 24)), labels=True)
    write_ct(folder, "b", make_phantom_hu((20, 22, 24), seed=3))
    (folder / "list.txt").write_text("# ct, labels, patient\na.nii.gz, a_labels.nii.gz, P1\n\nb.nii.gz,,P1\n")
    subject = tio.Subject(ct=tio.ScalarImage(path), seg=tio.LabelMap(folder / "a_labels.nii.gz"), patient="P2",
                          label_names={1: "soft", 2: "bone"})
    prepare([folder / "list.txt", subject], tmp_path / "cache", spacing=SPACING)
    first, second, third = read_index(tmp_path / "cache")["cts"]
    assert (first["patient"], second["patient"], third["patient"]) == ("P1", "P1", "P2")
    assert sorted(first["files"]) == ["hu", "labels", "tissue", "weights"] and "labels" not in second["files"]
    assert third["label_names"] == {"1": "soft", "2": "bone"} and third["source"] == str(path)
    expected = expected_volume(path, labels=folder / "a_labels.nii.gz")
    stored = np.load(tmp_path / "cache" / first["files"]["labels"]["path"])
    assert stored.dtype == np.int16 and torch.equal(torch.from_numpy(stored).long(), expected.labels[0].long())
    assert first["content_hash"] == third["content_hash"]  # one CT read through two routes


def test_globs_other_formats_and_patient_ids(tmp_path, make_phantom_hu):
    import SimpleITK as sitk

    folder = tmp_path / "in"
    folder.mkdir()
    write_ct(folder, "p1_a", make_phantom_hu((20, 22, 24)))
    image = sitk.GetImageFromArray(make_phantom_hu((24, 22, 20), seed=1).round().numpy().astype(np.int16))
    image.SetSpacing((1.0, 1.25, 1.5))
    sitk.WriteImage(image, str(folder / "p2_b.mha"))
    sitk.WriteImage(image, str(folder / "p2_c.nrrd"))
    sources = expand_sources([str(folder / "*.nii.gz"), str(folder / "p2_*")], patient_id=lambda n: Path(n).name[:2])
    assert [Path(s.name).name for s in sources] == ["p1_a.nii.gz", "p2_b.mha", "p2_c.nrrd"]
    assert [s.patient for s in sources] == ["p1", "p2", "p2"]
    report = prepare(sources, tmp_path / "cache", spacing=SPACING)
    assert len(report.prepared) == 3 and not report.failed
    b, c = read_index(tmp_path / "cache")["cts"][1:]
    assert b["content_hash"] == c["content_hash"]  # the same image as MHA and NRRD


def test_a_dicom_series_folder_is_one_ct(tmp_path, make_phantom_hu):
    import SimpleITK as sitk

    series = tmp_path / "dicom"
    series.mkdir()
    hu = make_phantom_hu((6, 20, 22)).round().numpy().astype(np.int16)  # (slices, rows, columns)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(hu.shape[0]):
        plane = sitk.GetImageFromArray(hu[z])
        plane.SetSpacing((1.0, 1.0))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0020|0013", str(z + 1)), ("0020|0032", f"0\\0\\{2.0 * z}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "1\\1"), ("0018|0050", "2")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(plane)
    report = prepare([series], tmp_path / "cache", spacing=SPACING)
    assert report.prepared == [str(series)], report.failed
    (entry,) = read_index(tmp_path / "cache")["cts"]
    assert entry["shape"] == [11, 10, 6]  # (columns, rows, slices) at 2 mm
    assert entry["spacing"] == pytest.approx([2.0, 2.0, 2.0])


def test_unreadable_cts_are_named_and_the_others_prepared(ct_files, tmp_path):
    broken = ct_files[0].parent / "broken.nii.gz"
    broken.write_bytes(b"not a CT at all" * 100)
    missing = ct_files[0].parent / "missing.nii.gz"
    with pytest.warns(UserWarning, match=r"2 CT\(s\) could not be prepared[\s\S]*broken.nii.gz[\s\S]*missing.nii.gz"):
        report = prepare([ct_files[0], broken, ct_files[1], missing], tmp_path / "cache", spacing=SPACING)
    assert report.prepared == [str(ct_files[0]), str(ct_files[1])]
    assert [name for name, _ in report.failed] == [str(broken), str(missing)]
    assert "FileNotFoundError" in report.failed[1][1]
    index = read_index(tmp_path / "cache")
    assert [entry["source"] for entry in index["cts"]] == [str(ct_files[0]), str(ct_files[1])]
    assert [item["source"] for item in index["failed"]] == [str(broken), str(missing)]
    with pytest.raises(ValueError, match="broken.nii.gz"):
        prepare([broken, ct_files[2]], tmp_path / "strict", spacing=SPACING, on_error="raise")
    assert [e["source"] for e in read_index(tmp_path / "strict")["cts"]] == [str(ct_files[2])]


def test_hu_outside_int16_is_refused_not_clamped(tmp_path):
    hot = Volume.from_tensor(torch.full((8, 8, 8), 40000.0), spacing=2.0)
    with pytest.raises(ValueError, match=r"none of the 1 CT\(s\) could be prepared:\n  <volume 0>: ValueError: hu: "
                                         r"the resampled HU span \[40000, 40000\]"):
        prepare([hot], tmp_path / "cache", spacing=SPACING)


def interrupt_after(count: int, real):
    calls = {"n": 0}

    def prepare_one(*args):
        if calls["n"] == count:
            raise KeyboardInterrupt  # what a kill leaves: no index, CTs done so far complete
        calls["n"] += 1
        return real(*args)

    return prepare_one


def test_a_killed_preparation_resumes_where_it_stopped(ct_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(preparation, "prepare_one", interrupt_after(2, preparation.prepare_one))
    with pytest.raises(KeyboardInterrupt):
        prepare(ct_files, cache, spacing=SPACING)
    assert not (cache / "index.json").exists()
    (cache / "cts" / "ct2-000000000000.tmp-deadbeef").mkdir()  # a half-written CT
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_index(cache)
    monkeypatch.undo()
    report = prepare(ct_files, cache, spacing=SPACING)
    assert report.skipped == [str(p) for p in ct_files[:2]] and report.prepared == [str(ct_files[2])]
    assert [e["source"] for e in read_index(cache)["cts"]] == [str(p) for p in ct_files]
    assert not list((cache / "cts").glob("*.tmp-*"))
    whole = prepare(ct_files, tmp_path / "whole", spacing=SPACING)
    assert len(whole.prepared) == 3
    hashes = [[e["content_hash"] for e in read_index(folder)["cts"]] for folder in (cache, tmp_path / "whole")]
    assert hashes[0] == hashes[1]


@pytest.mark.slow
def test_a_sigkilled_preparation_resumes(ct_files, tmp_path):
    cache = tmp_path / "cache"
    code = (  # each CT takes at least half a second, so the kill lands between the first and the last
        "import time; import onthefly.sampling.preparation as p; real = p.prepare_one; "
        "p.prepare_one = lambda *a: (time.sleep(0.5), real(*a))[1]; "
        f"p.prepare({[str(p) for p in ct_files]!r}, {str(cache)!r}, spacing={SPACING})"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 120
    while not list(cache.glob("cts/*/entry.json")) and time.time() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    done = len(list(cache.glob("cts/*/entry.json")))
    assert 1 <= done < 3 and not (cache / "index.json").exists()
    report = prepare(ct_files, cache, spacing=SPACING)
    assert len(report.skipped) == done and len(report.prepared) == 3 - done
    assert [e["source"] for e in read_index(cache)["cts"]] == [str(p) for p in ct_files]


def test_prepared_cts_are_skipped_and_changed_sources_redone(ct_files, tmp_path, make_phantom_hu):
    cache = tmp_path / "cache"
    prepare(ct_files, cache, spacing=SPACING)
    first_hu = cache / read_index(cache)["cts"][0]["files"]["hu"]["path"]
    stamp = first_hu.stat().st_mtime_ns
    again = prepare(ct_files, cache, spacing=SPACING)
    assert again.skipped == [str(p) for p in ct_files] and not again.prepared
    assert first_hu.stat().st_mtime_ns == stamp
    write_ct(ct_files[1].parent, "ct1", make_phantom_hu((20, 20, 20), seed=9))  # the same path, a new CT
    changed = prepare(ct_files, cache, spacing=SPACING)
    assert changed.prepared == [str(ct_files[1])]
    assert read_index(cache)["cts"][1]["shape"] == list(expected_volume(ct_files[1]).shape)


def test_a_folder_of_other_settings_is_refused_unless_overwritten(ct_files, tmp_path):
    prepare(ct_files[:1], tmp_path / "cache", spacing=SPACING)
    with pytest.raises(ValueError, match=r"output: .* prepared with settings .*'spacing': \[2.0, 2.0, 2.0\]"):
        prepare(ct_files[:1], tmp_path / "cache", spacing=3.0)
    report = prepare(ct_files[:1], tmp_path / "cache", spacing=3.0, overwrite=True)
    assert report.prepared == [str(ct_files[0])]
    assert read_index(tmp_path / "cache")["settings"]["spacing"] == [3.0] * 3


@pytest.mark.parametrize(
    ("sources", "changes", "error", "message"),
    [
        ([], {}, ValueError, "sources: expected at least one CT"),
        (["nothing-here-*.nii.gz"], {}, ValueError, "matches no file"),
        ([3], {}, TypeError, r"sources\[0\]: expected a path"),
        (None, {"spacing": -1.0}, ValueError, "spacing: expected one or three positive"),
        (None, {"spacing": (1.0, 2.0)}, ValueError, "spacing: expected one or three positive"),
        (None, {"spacing": "1mm"}, ValueError, "spacing: expected one or three positive"),
        (None, {"workers": 0}, ValueError, "workers: expected an int >= 1"),
        (None, {"weighting": "hard"}, ValueError, "weighting: expected one of"),
        (None, {"air_threshold_hu": float("nan")}, ValueError, "air_threshold_hu: expected a finite"),
        (None, {"on_error": "ignore"}, ValueError, "on_error: expected one of"),
    ],
)
def test_bad_arguments_are_refused(ct_files, tmp_path, sources, changes, error, message):
    arguments = {"spacing": SPACING} | changes
    with pytest.raises(error, match=message):
        prepare(ct_files if sources is None else sources, tmp_path / "cache", **arguments)


def test_bad_list_files_duplicates_and_a_file_as_output(ct_files, tmp_path):
    listing = tmp_path / "cts.csv"
    listing.write_text("a.nii.gz,b.nii.gz,P1,extra\n")
    with pytest.raises(ValueError, match=r"cts.csv line 1: expected 'ct\[,labels\[,patient\]\]'"):
        prepare([listing], tmp_path / "cache", spacing=SPACING)
    with pytest.raises(ValueError, match="ct0.nii.gz is listed twice"):
        prepare([ct_files[0], ct_files[1], ct_files[0]], tmp_path / "cache", spacing=SPACING)
    with pytest.raises(ValueError, match="output: expected a folder"):
        prepare(ct_files, ct_files[0], spacing=SPACING)


def test_tissue_grid_counts_partial_blocks_over_their_voxels():
    hu = torch.full((5, 4, 4), -1000.0)
    hu[4] = 0.0  # the last, partial block of two planes along axis 0 is half tissue... of its one plane
    grid = tissue_grid(hu, (2, 4, 4), -900.0)
    assert grid.shape == (3, 1, 1) and grid.flatten().tolist() == [0.0, 0.0, 1.0]


@pytest.mark.slow
def test_two_workers_give_the_same_cache(ct_files, tmp_path):
    serial = prepare(ct_files, tmp_path / "one", spacing=SPACING, workers=1)
    parallel = prepare(ct_files, tmp_path / "two", spacing=SPACING, workers=2)
    assert sorted(parallel.prepared) == sorted(serial.prepared)
    one, two = (read_index(tmp_path / name)["cts"] for name in ("one", "two"))
    assert [e["content_hash"] for e in one] == [e["content_hash"] for e in two]
    assert [e["source"] for e in two] == [str(p) for p in ct_files]  # the order of the sources, not of completion


def test_command_line_prepare(ct_files, tmp_path, capsys):
    broken = ct_files[0].parent / "broken.nii.gz"
    broken.write_bytes(b"\x00" * 64)
    arguments = ["prepare", *map(str, ct_files[:2]), str(broken), "--output", str(tmp_path / "cache"),
                 "--spacing", str(SPACING)]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["prepared"] == 2 and summary["failed"][0]["ct"] == str(broken)
    assert "broken.nii.gz" in captured.err and captured.err.count("\r") == 0  # named; no progress bar off a terminal
    assert main([*arguments, "--strict"]) == 1
    assert json.loads(capsys.readouterr().out)["skipped"] == 2


SCRIPT = """
import sys
import torch
from onthefly import Volume
from onthefly.sampling.preparation import prepare

print("script body ran", flush=True)  # once: workers must not run the caller's script again
cts = [Volume.from_tensor(torch.full((10, 10, 10), 40.0 + i), spacing=2.0) for i in range(3)]
report = prepare(cts, sys.argv[1], spacing=4.0, workers=2)
print("prepared", len(report.prepared), "failed", len(report.failed), flush=True)
"""


def test_workers_in_a_plain_script_without_a_main_guard(tmp_path):
    """docs/many_cts.md's ``prepare(..., workers=4)``, saved as a script and run with python."""
    script = tmp_path / "prepare_cts.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("script body ran") == 1
    assert "prepared 3 failed 0" in result.stdout
    assert len(read_index(tmp_path / "cache")["cts"]) == 3


def test_a_run_that_prepares_nothing_fails_loudly(ct_files, tmp_path, capsys):
    broken = ct_files[0].parent / "broken.nii.gz"
    broken.write_bytes(b"not a CT" * 20)
    for workers in (1, 2):
        with pytest.raises(ValueError, match=r"sources: none of the 2 CT\(s\) could be prepared:\n  .*broken.nii.gz"):
            prepare([broken, ct_files[0].parent / "missing.nii.gz"], tmp_path / f"none{workers}", spacing=SPACING,
                    workers=workers)
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", str(broken), "--output", str(tmp_path / "cli")])
    assert stopped.value.code == 2
    assert "onthefly prepare: error: CT: none of the 1 CT(s) could be prepared" in capsys.readouterr().err


def test_every_prepared_file_is_checksummed_block_by_block(ct_files, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_format, "BLOCK_BYTES", 4096)
    prepare(ct_files[:1], tmp_path / "cache", spacing=SPACING)
    (entry,) = read_index(tmp_path / "cache")["cts"]
    assert entry["digests"] == preparation.field_digests(entry)
    for name, record in entry["files"].items():
        path = tmp_path / "cache" / record["path"]
        array = np.load(path)
        planes = record["block_planes"]
        assert planes == min(array.shape[0], max(1, 4096 // array[0].nbytes)) and len(record["checksums"]) == -(-array.shape[0] // planes)
        for block, checksum in enumerate(record["checksums"]):
            data = array[block * planes : (block + 1) * planes].tobytes()
            assert preparation.block_checksum(data, record["path"], block) == checksum, (name, block)


def test_a_folder_of_the_former_format_is_prepared_again_without_overwrite(ct_files, tmp_path):
    cache = tmp_path / "cache"
    prepare(ct_files[:2], cache, spacing=SPACING)
    index = json.loads((cache / "index.json").read_text())
    index["version"] = 1
    index["settings"]["format_version"] = 1
    (cache / "index.json").write_text(json.dumps(index))
    for entry_file in cache.glob("cts/*/entry.json"):
        entry = json.loads(entry_file.read_text())
        entry["settings"]["format_version"] = 1
        entry_file.write_text(json.dumps(entry))
    with pytest.raises(ValueError, match="format version 1"):
        read_index(cache)
    report = prepare(ct_files[:2], cache, spacing=SPACING)
    assert report.prepared == [str(p) for p in ct_files[:2]] and read_index(cache)["version"] == 2


def test_an_edited_entry_json_is_prepared_again(ct_files, tmp_path):
    cache = tmp_path / "cache"
    prepare(ct_files[:2], cache, spacing=SPACING)
    entry_file = next(cache.glob("cts/ct1-*/entry.json"))
    entry = json.loads(entry_file.read_text())
    entry["affine"][0][3] += 10.0
    entry_file.write_text(json.dumps(entry))
    report = prepare(ct_files[:2], cache, spacing=SPACING)
    assert report.skipped == [str(ct_files[0])] and report.prepared == [str(ct_files[1])]


def _prepare_usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", *argv])
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_command_line_prepare_usage_errors_name_the_flag(ct_files, tmp_path, capsys):
    ct = str(ct_files[0])
    output = str(tmp_path / "cache")
    assert "argument --spacing: expected a positive float, got '0'" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--spacing", "0"])
    assert "--spacing: expected one or three values (mm), got 2" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--spacing", "1", "2"])
    assert "argument --workers: expected a positive int, got '0'" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--workers", "0"])
    assert "error: CT: the pattern" in _prepare_usage_error(capsys, [str(tmp_path / "none-*.nii.gz"), "--output", output])
    assert "--patient-pattern: '(unclosed' is not a regular expression" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--patient-pattern", "(unclosed"])
    assert "--patient-pattern: 'patient_(\\\\d+)' does not match the CT" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--patient-pattern", r"patient_(\d+)"])
    assert "--air-threshold: expected a finite number" in _prepare_usage_error(
        capsys, [ct, "--output", output, "--air-threshold", "nan"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert f"--output: cannot make the folder {blocker / 'cache'}: {blocker} is a file" in _prepare_usage_error(
        capsys, [ct, "--output", str(blocker / "cache")])
    assert "--output: expected a folder, got the file" in _prepare_usage_error(capsys, [ct, "--output", str(blocker)])
    assert main(["prepare", ct, "--output", output, "--spacing", str(SPACING)]) == 0
    capsys.readouterr()
    assert "--output: " in _prepare_usage_error(capsys, [ct, "--output", output, "--spacing", "3"])
    assert not (tmp_path / "none-").exists()
