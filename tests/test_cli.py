"""The command line and the pictures behind it."""

from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path

import matplotlib.image
import pytest

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


def test_bad_beta_count_is_reported():
    with pytest.raises(SystemExit, match="--beta"):
        main(["preview", "--alpha", "0", "90", "--beta", "10"])


@pytest.mark.slow
def test_sampler_loop_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "sampler_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same batch as the uninterrupted stream: True" in out
    assert "DataLoader steps: [4, 5]" in out
    read_png(tmp_path / "outputs" / "examples" / "sampled_batch.png")


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
             "--fracture-probability": "[0, 1]", "--d-model": "channels"}
    trains = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    tasks = next(a for a in trains._actions if isinstance(a, argparse._SubParsersAction)).choices
    for task in tasks.values():
        for action in task._actions:
            assert action.help, f"{action.option_strings} has no help"
            for flag in action.option_strings:
                if flag in units:
                    assert units[flag] in action.help, f"{flag}: no unit in {action.help!r}"


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
