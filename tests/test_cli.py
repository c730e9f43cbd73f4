"""The command line and the pictures behind it."""

from __future__ import annotations

import argparse
import csv
import json
import runpy
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from onthefly import DISPLAYS, AnatomyVariation, Physics
from onthefly.cli import main


def read_png(path: Path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_preview_writes_a_png_and_reports_shapes(tmp_path, capsys):
    output = tmp_path / "preview.png"
    assert main(["preview", "--size", "64", "--pixel-spacing", "8", "--patch-size", "16", "--output", str(output),
                 "--alpha", "0", "90", "45"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == [1, 3, 1, 64, 64]
    assert summary["correspondence"] == [1, 48, 48]
    image = read_png(output)
    assert image[..., :3].std() > 0.05  # not a blank figure


def test_sampled_preview(tmp_path, capsys):
    output = tmp_path / "batch.png"
    assert main(["preview", "--sampled", "--size", "64", "--patch-size", "16", "--samples", "2", "--views", "3",
                 "--spacing", "4", "--crop-size", "160", "--geometric", "0.5", "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == [2, 3, 1, 64, 64]
    assert summary["correspondence"] == [2, 48, 48]
    read_png(output)
    pictures = {}
    for display in ("minmax", "radiograph"):  # the same batch, shown two ways
        pictures[display] = tmp_path / f"{display}.png"
        assert main(["preview", "--sampled", "--size", "64", "--patch-size", "16", "--samples", "2", "--spacing", "4",
                     "--crop-size", "160", "--display", display, "--output", str(pictures[display])]) == 0
    capsys.readouterr()
    plain, processed = read_png(pictures["minmax"]), read_png(pictures["radiograph"])
    assert plain.shape == processed.shape and not np.array_equal(plain, processed)


def test_bad_beta_count_is_reported():
    with pytest.raises(SystemExit, match="--beta"):
        main(["preview", "--alpha", "0", "90", "--beta", "10"])


@pytest.mark.slow
def test_sampler_loop_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sampler_loop.py", "--image-size", "64", "--spacing", "4"])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "sampler_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same batch as the uninterrupted stream: True" in out
    assert "DataLoader steps: [4, 5]" in out
    read_png(tmp_path / "outputs" / "examples" / "sampled_batch.png")


# --------------------------------------------------------------------- render


def usage_error(capsys, argv: list[str]) -> str:
    """Run a command that must stop on bad input: exit status 2, the message on stderr."""
    with pytest.raises(SystemExit) as exit_code:
        main(argv)
    assert exit_code.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"onthefly {argv[0]}: error: ")
    return error


@pytest.fixture
def phantom_file(tmp_path, make_phantom_hu) -> str:
    import nibabel as nib
    import numpy as np

    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom_hu((32, 32, 32)).numpy(), np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return str(path)


def test_render_writes_views_and_the_correspondence_picture(phantom_file, tmp_path, capsys):
    output = tmp_path / "out" / "views.png"
    assert main(["render", phantom_file, "--alpha", "0", "90", "30", "--beta", "0", "0", "10", "--image-size", "64",
                 "--output", str(output), "--correspondence"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == [1, 3, 1, 64, 64] and summary["correspondence"] == [1, 48, 48]
    assert summary["pixel_spacing_mm"] == pytest.approx(1.1 * 128 * 1020 / 850 / 64)  # frames the 128 mm CT
    assert read_png(output)[..., :3].std() > 0.05
    assert Path(summary["correspondence_png"]) == tmp_path / "out" / "views-correspondence.png"
    read_png(tmp_path / "out" / "views-correspondence.png")


def test_render_refuses_bad_input_with_status_2(phantom_file, tmp_path, capsys, monkeypatch):
    output = str(tmp_path / "views.png")
    assert "CT: path: no such file or folder" in usage_error(capsys, ["render", str(tmp_path / "none.nii"),
                                                                      "--output", output])
    text = tmp_path / "notes.txt"
    text.write_text("not a CT")
    assert "cannot be read as a CT image" in usage_error(capsys, ["render", str(text), "--output", output])
    blocked = usage_error(capsys, ["render", phantom_file, "--output", str(text / "views.png")])
    assert f"--output: cannot write {text / 'views.png'}: {text} is a file, not a folder" in blocked
    assert "--output: expected a file path, got the folder" in usage_error(capsys, ["render", phantom_file,
                                                                                    "--output", str(tmp_path)])
    assert "--beta: expected 2 values" in usage_error(capsys, ["render", phantom_file, "--beta", "1",
                                                               "--output", output])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device: cuda was asked for, but torch finds no CUDA device" in usage_error(
        capsys, ["render", phantom_file, "--device", "cuda", "--output", output])
    assert not (tmp_path / "views.png").exists()


# --------------------------------------------------------------------- benchmark


def test_benchmark_prints_a_table_and_writes_nothing_unasked(phantom_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    assert main(["benchmark", phantom_file, "--views", "2", "--image-size", "16", "--repeats", "2", "--quiet"]) == 0
    captured = capsys.readouterr()
    header, row = captured.out.strip().splitlines()[-2:]
    assert header.split()[:5] == ["library", "method", "dtype", "B", "x"]
    assert row.split()[:6] == ["onthefly", "trilinear", "float32", "1", "x", "2"]
    assert "onthefly: " in captured.err and "DRRs/s" in captured.err  # the progress lines
    assert set(tmp_path.iterdir()) == before


def test_benchmark_json_and_output_file(phantom_file, tmp_path, capsys):
    output = tmp_path / "reports" / "bench.json"
    assert main(["benchmark", phantom_file, "--views", "1", "--image-size", "16", "--repeats", "1", "--batch", "2",
                 "--crop-size", "80", "--error", "--dtype", "float64", "--json", "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(output.read_text())
    assert printed["rows"][0]["dtype"] == saved["rows"][0]["dtype"] == "float64"
    assert saved["settings"]["batch"] == 2 and 0 < saved["rows"][0]["relative_l1"] < 0.2
    assert "NaN" not in output.read_text()


def test_benchmark_refuses_bad_input_with_status_2(phantom_file, tmp_path, capsys, monkeypatch):
    assert "CT: path: no such file or folder" in usage_error(capsys, ["benchmark", str(tmp_path / "none.nrrd")])
    (tmp_path / "empty").mkdir()
    assert "holds no files" in usage_error(capsys, ["benchmark", str(tmp_path / "empty")])
    assert "--against: expected libraries from diffdrr, got astra" in usage_error(
        capsys, ["benchmark", phantom_file, "--against", "astra"])
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert "is a file, not a folder" in usage_error(capsys, ["benchmark", phantom_file, "--output",
                                                             str(blocked / "bench.json")])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device: cuda was asked for, but torch finds no CUDA device" in usage_error(
        capsys, ["benchmark", phantom_file, "--device", "cuda"])
    monkeypatch.setitem(sys.modules, "diffdrr", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert "--against: diffdrr is not installed (pip install --no-deps diffdrr==0.6.1)" in usage_error(
        capsys, ["benchmark", phantom_file, "--against", "diffdrr"])


def test_benchmark_compile_is_run_or_said_to_be_unavailable(phantom_file, capsys):
    from onthefly.benchmark import compile_available

    argv = ["benchmark", phantom_file, "--views", "1", "--image-size", "16", "--repeats", "1", "--compile"]
    if compile_available():
        assert main(argv) == 0
        assert "compiled" in capsys.readouterr().out
    else:
        assert "--compile: not available" in usage_error(capsys, argv)


@pytest.mark.slow
def test_benchmark_against_diffdrr(phantom_file, capsys):
    pytest.importorskip("diffdrr")
    assert main(["benchmark", phantom_file, "--views", "2", "--image-size", "16", "--repeats", "1",
                 "--against", "diffdrr", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [row["library"] for row in rows] == ["onthefly", "diffdrr"] and rows[1]["status"] == "ok"


# --------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_shows_progress_and_ends_with_the_summary_line(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "--steps", "2", "--eval-batches", "1", "--size", "64", "--pixel-spacing", "8", "--quiet",
                 "--output", str(output)]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("loss ") and " -> " in last and "held-out AP" in last and "(trained)" in last
    assert "train correspondence: step 2/2 (100 %)" in captured.err
    summary = json.loads((output / "summary.json").read_text())
    assert {"loss_first_10pct", "held_out_ap_untrained", "held_out_ap_trained"} <= set(summary["training"])
    for picture in ("views.png", "correspondence_preview.png"):
        read_png(output / picture)


# --------------------------------------------------------------------- train


def test_train_help_shows_defaults_and_every_flag_explains_itself(capsys):
    from onthefly.cli import _parser

    with pytest.raises(SystemExit) as exit_code:
        main(["train", "correspondence", "--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ["samples per step (per rank) (default: 16)", "(default: paper)", "(default: 256)",
                  "(default: 0.0001)", "(default: 1000)", "(default: 0)"]:
        assert shown in text
    units = {"--crop-size": "mm", "--spacing": "mm", "--image-size": "pixels", "--patch-size": "pixels",
             "--steps": "steps", "--checkpoint-every": "steps", "--eval-every": "steps", "--log-every": "steps",
             "--fracture-probability": "[0, 1]", "--d-model": "channels", "--alpha": "degrees", "--beta": "degrees",
             "--sid": "mm", "--sdd": "mm", "--size": "pixels", "--pixel-spacing": "mm", "--geometric": "[0, 1]"}
    for command in _commands(_parser()):
        for action in command._actions:
            assert action.help, f"{command.prog} {action.option_strings or action.dest} has no help"
            for flag in action.option_strings:
                if flag in units:
                    assert units[flag] in action.help, f"{command.prog} {flag}: no unit in {action.help!r}"


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser (``onthefly demo``, ``onthefly train correspondence``, ...)."""
    found = []
    for action in parser._actions:  # argparse has no public way to walk its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                children = _commands(sub)
                found += children or [sub]
    return found


def test_every_command_answers_help_with_its_defaults(capsys):
    from onthefly.cli import _parser

    for command in _commands(_parser()):
        words = command.prog.split()[1:]
        with pytest.raises(SystemExit) as exit_code:
            main([*words, "--help"])
        assert exit_code.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: {command.prog}")
        if any(action.default not in (None, False, [], argparse.SUPPRESS) for action in command._actions
               if action.option_strings and action.dest != "help"):
            assert "(default: " in text, command.prog


@pytest.fixture
def tiny_run(tmp_path, make_phantom_hu):
    """Command-line flags of a run of a few seconds on two small phantom CTs (120 mm cubes)."""
    import nibabel as nib
    import numpy as np

    paths = []
    for seed, name in enumerate(["train.nii.gz", "eval.nii.gz"]):
        hu = make_phantom_hu((40, 40, 40), seed=seed).numpy()
        nib.save(nib.Nifti1Image(hu, np.diag([3.0, 3.0, 3.0, 1.0])), str(tmp_path / name))
        paths.append(str(tmp_path / name))
    return ["--model", "small", "--d-model", "16", "--heads", "2", "--layers", "1", "--image-size", "32",
            "--patch-size", "16", "--crop-size", "60", "--spacing", "5", "--batch-size", "2", "--steps", "2",
            "--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "1", "--lr", "1e-3", "--device", "cpu",
            "--volumes", paths[0], "--eval-volumes", paths[1]]


@pytest.mark.slow
def test_resume_remembers_the_run_and_refuses_changed_flags(tiny_run, tmp_path, capsys):
    import torch

    output = str(tmp_path / "corr")
    assert main(["train", "correspondence", *tiny_run, "--output", output, "--stop-at", "1"]) == 0
    saved = torch.load(Path(output) / "checkpoint.pt", weights_only=True)["train_config"]["command"]
    assert saved["batch_size"] == 2 and saved["model"] == "small" and saved["task"] == "correspondence"
    assert main(["train", "correspondence", "--output", output, "--resume"]) == 0  # no flags repeated
    capsys.readouterr()
    assert json.loads((Path(output) / "summary.json").read_text())["steps_done"] == 2
    with pytest.raises(SystemExit, match=r"--batch-size: saved 2, given 4.*--model: saved 'small', given 'paper'"):
        main(["train", "correspondence", "--output", output, "--resume", "--batch-size", "4", "--model", "paper"])
    with pytest.raises(SystemExit, match=r"--lr: saved 0.001, given 0.01.*--resume-override lr"):
        main(["train", "correspondence", "--output", output, "--resume", "--lr", "1e-2"])
    assert main(["train", "correspondence", "--output", output, "--resume", "--lr", "1e-2", "--resume-override", "lr",
                 "--steps", "3"]) == 0
    assert json.loads((Path(output) / "summary.json").read_text())["steps_done"] == 3
    with pytest.raises(SystemExit, match="holds a correspondence run; resume it with `onthefly train correspondence"):
        main(["train", "classifier", "--output", output, "--resume"])


@pytest.mark.slow
def test_classifier_init_from_reads_the_trunk_from_the_checkpoint(tiny_run, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["train", "correspondence", *tiny_run, "--output", str(pre)]) == 0
    trunk_free = [flag for flag in tiny_run]
    for flag in ("--d-model", "--heads", "--layers"):  # leave the trunk to the checkpoint
        index = trunk_free.index(flag)
        del trunk_free[index : index + 2]
    out = tmp_path / "cls"
    assert main(["train", "classifier", *trunk_free, "--init-from", str(pre / "checkpoint.pt"),
                 "--output", str(out)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_config"]["backbone"] == "small" and summary["model_config"]["d_model"] == 16
    with pytest.raises(SystemExit, match=r"--init-from: .*--backbone: checkpoint 'small', given 'patch'"):
        main(["train", "classifier", *trunk_free, "--backbone", "patch", "--init-from", str(pre / "checkpoint.pt"),
              "--output", str(tmp_path / "other")])


def test_damaged_checkpoints_given_to_the_cli_are_named(tiny_run, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit, match=r"--guidance-from: the checkpoint .*bad.pt is damaged"):
        main(["train", "classifier", *tiny_run, "--guidance-from", str(bad), "--output", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"--init-from: the checkpoint .*bad.pt is damaged"):
        main(["train", "classifier", *tiny_run, "--init-from", str(bad), "--output", str(tmp_path / "b")])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"PK" + b"\x01" * 50)
    with pytest.raises(SystemExit, match=r"--resume: the checkpoint .*checkpoint.pt is damaged"):
        main(["train", "correspondence", *tiny_run, "--output", str(tmp_path / "c"), "--resume"])


def test_cuda_without_cuda_is_refused_by_the_cli(tiny_run, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device: cuda was asked for, but torch finds no CUDA device.*--device cpu"):
        main(["train", "correspondence", *tiny_run, "--device", "cuda", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="--device: expected cpu, cuda or cuda:N"):
        main(["train", "correspondence", *tiny_run, "--device", "gpu0", "--output", str(tmp_path)])


@pytest.mark.slow
def test_prepare_then_train_on_the_prepared_folder(tiny_run, tmp_path, capsys):
    sources = [tiny_run[tiny_run.index("--volumes") + 1], tiny_run[tiny_run.index("--eval-volumes") + 1]]
    folder = tmp_path / "prepared"
    assert main(["prepare", *sources, "--output", str(folder), "--spacing", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["prepared"] == 2
    flags = tiny_run[: tiny_run.index("--volumes")]
    # One prepared folder: a fifth of its patients (here one of the two CTs) is held out for evaluation.
    assert main(["train", "correspondence", *flags, "--volumes", str(folder), "--output", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps_done"] == 2 and summary["final_eval"] is not None
    with pytest.raises(SystemExit, match="prepared folder alone"):
        main(["train", "correspondence", *flags, "--volumes", str(folder), sources[0], "--output", str(tmp_path / "x")])


# --------------------------------------------------------------------- progress and logs


def test_quiet_training_logs_plain_lines_and_tensorboard_reads_back(tiny_run, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    assert main(["train", "correspondence", *tiny_run, "--log-every", "1", "--quiet", "--output", str(output),
                 "--tensorboard"]) == 0
    err = capsys.readouterr().err
    assert "evaluate correspondence at step 0 (1 held-out batches" in err
    lines = [line for line in err.splitlines() if line.startswith("train correspondence: step ")]
    assert [line.split(",")[0] for line in lines] == ["train correspondence: step 1/2 (50 %)",
                                                      "train correspondence: step 2/2 (100 %)"]
    assert "samples/s" in lines[0] and "ETA" in lines[1]
    events = EventAccumulator(str(output / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "eval/ap", "eval/mse"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    csv_losses = [float(row["loss"]) for row in csv.DictReader(open(output / "metrics.csv")) if row["loss"]]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(csv_losses, rel=1e-4)
    assert [e.step for e in events.Images("eval/prediction")] == [0, 2]


def test_tensorboard_missing_stops_before_training(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    message = usage_error(capsys, ["train", "correspondence", *tiny_run, "--tensorboard", str(tmp_path / "tb"),
                                   "--output", str(tmp_path / "run")])
    assert "--tensorboard: TensorBoard logs need the tensorboard package" in message
    assert "pip install 'onthefly[logs]'" in message
    assert not (tmp_path / "run").exists()


def _capture_sampler_configs(monkeypatch, trainer: str) -> dict:
    """Replace ``onthefly.train.<trainer>`` by a stub that records the train and eval samplers' configs."""
    import onthefly.train

    seen = {}

    def capture(model_config, sampler, config, *, eval_sampler=None, **_):
        seen["train"], seen["eval"] = sampler.config, eval_sampler.config
        return {}

    monkeypatch.setattr(onthefly.train, trainer, capture)
    return seen


def test_classifier_display_and_paired_fractures_reach_the_samplers(tiny_run, tmp_path, monkeypatch):
    seen = _capture_sampler_configs(monkeypatch, "train_classifier")
    assert main(["train", "classifier", *tiny_run, "--display", "radiograph", "--paired-fractures",
                 "--output", str(tmp_path / "cls")]) in (0, None)
    assert seen["train"].display == seen["eval"].display == DISPLAYS["radiograph"]
    assert seen["train"].fractures.paired and not seen["eval"].fractures.paired
    with pytest.raises(SystemExit):
        main(["train", "correspondence", *tiny_run, "--display", "log", "--output", str(tmp_path / "corr")])


def test_correspondence_footprint_flag_reaches_both_samplers(tiny_run, tmp_path, monkeypatch):
    seen = _capture_sampler_configs(monkeypatch, "train_correspondence")
    assert main(["train", "correspondence", *tiny_run, "--footprint", "separable",
                 "--output", str(tmp_path / "corr")]) in (0, None)
    assert seen["train"].footprint == seen["eval"].footprint == "separable"
    assert main(["train", "correspondence", *tiny_run, "--output", str(tmp_path / "corr2")]) in (0, None)
    assert seen["train"].footprint == seen["eval"].footprint == "exact"
    with pytest.raises(SystemExit):
        main(["train", "correspondence", *tiny_run, "--footprint", "hexagon", "--output", str(tmp_path / "corr3")])


def test_physics_and_anatomy_flags_randomise_the_training_sampler_only(tiny_run, tmp_path, monkeypatch):
    seen = _capture_sampler_configs(monkeypatch, "train_correspondence")
    assert main(["train", "correspondence", *tiny_run, "--physics", "--anatomy",
                 "--output", str(tmp_path / "corr")]) in (0, None)
    assert seen["train"].physics == Physics() and seen["train"].anatomy == AnatomyVariation()
    assert seen["eval"].physics is None and seen["eval"].anatomy is None
    assert main(["train", "correspondence", *tiny_run, "--eval-physics", "--output", str(tmp_path / "corr2")]) in (0, None)
    assert seen["train"].physics is None and seen["eval"].physics == Physics()
    assert seen["train"].anatomy is None and seen["eval"].anatomy is None


# --------------------------------------------------------------------- outputs checked before any work


def test_outputs_that_would_destroy_inputs_or_cannot_be_written_are_refused_up_front(phantom_file, tmp_path, capsys,
                                                                                       monkeypatch):
    before = Path(phantom_file).read_bytes()
    assert "--output: expected a file name ending in .json" in usage_error(
        capsys, ["benchmark", phantom_file, "--output", phantom_file])
    monkeypatch.chdir(Path(phantom_file).parent)
    link = Path(phantom_file).with_name("report.json")
    link.symlink_to(phantom_file)
    assert f"--output: {link} is the input {phantom_file}" in usage_error(
        capsys, ["benchmark", phantom_file, "--output", str(link)])
    assert "--output: " in usage_error(capsys, ["render", phantom_file, "--output", phantom_file])
    assert "--output: " in usage_error(capsys, ["preview", "--volume", phantom_file, "--output", phantom_file])
    assert Path(phantom_file).read_bytes() == before

    import onthefly.cli.pictures as pictures

    monkeypatch.setattr(pictures, "render", lambda *a, **k: pytest.fail("rendered before the output was checked"))
    for name, got in (("views.xyz", "the suffix '.xyz'"), ("views", "no suffix"), ("views.json", "the suffix '.json'")):
        message = usage_error(capsys, ["render", phantom_file, "--output", str(tmp_path / name)])
        assert f"--output: expected a file name ending in .png, .pdf, .svg, .jpg, .jpeg, got '{tmp_path / name}' ({got})" \
            in message
    series = tmp_path / "series"
    series.mkdir()
    (series / "slice1.dcm").write_bytes(b"")
    assert f"--output: {series / 'views.png'} is inside the input {series}" in usage_error(
        capsys, ["render", str(series), "--output", str(series / "views.png")])
    assert "--crop-size: expected at most the CT's longest edge, 128 mm (the CT spans 128 x 128 x 128 mm), got 5000 mm" \
        in usage_error(capsys, ["benchmark", phantom_file, "--batch", "2", "--crop-size", "5000"])


@pytest.mark.parametrize("suffix", [".svg", ".pdf", ".jpg"])
def test_render_writes_and_reports_the_path_it_wrote(phantom_file, tmp_path, capsys, suffix):
    output = tmp_path / f"views{suffix}"
    assert main(["render", phantom_file, "--alpha", "0", "--image-size", "32", "--output", str(output),
                 "--correspondence"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["views_png"] == str(output) and output.stat().st_size > 0
    assert summary["correspondence_png"] == str(tmp_path / f"views-correspondence{suffix}")
    assert Path(summary["correspondence_png"]).stat().st_size > 0
