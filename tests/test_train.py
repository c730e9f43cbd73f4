"""Training the correspondence model: files, exact resume after a kill, held-out split, torchrun."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onthefly import DRRCorrespondenceSampler, Volume
from onthefly.models import CorrespondenceConfig
from onthefly.train import TrainConfig, evaluate_correspondence, split_volume, train_correspondence

TINY_DATA = dict(views=2, image_size=32, patch_size=16, crop_size=100.0, spacing=5.0, batch_size=2)


@pytest.fixture(scope="module")
def samplers(ct_small):
    train_part, eval_part = split_volume(ct_small, fraction=0.6)
    return (
        DRRCorrespondenceSampler(volumes=[train_part], seed=1, **TINY_DATA),
        DRRCorrespondenceSampler(volumes=[eval_part], seed=2, augmentation=None, **TINY_DATA),
    )


def tiny_model() -> CorrespondenceConfig:
    return CorrespondenceConfig.small(d_model=16, heads=2, layers=1, mlp=32, patch_size=16)


def run(samplers, output: Path, **changes) -> dict:
    config = TrainConfig(output=str(output), steps=4, lr=1e-3, checkpoint_every=2, eval_every=2, eval_batches=1,
                         log_every=1, progress=False)
    for key, value in changes.items():
        setattr(config, key, value)
    return train_correspondence(tiny_model(), samplers[0], config, eval_sampler=samplers[1])


def test_training_writes_checkpoint_metrics_pictures(samplers, tmp_path):
    summary = run(samplers, tmp_path)
    assert summary["steps_done"] == 4
    assert all(torch.isfinite(torch.tensor([summary["loss_first"], summary["loss_last"]])))
    assert 0 <= summary["sampler_fraction"] <= 1 and summary["samples_per_s"] > 0
    for key in ("mse", "precision", "recall", "ap"):
        assert key in summary["initial_eval"] and key in summary["final_eval"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r["eval_ap"]] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "step_000000.png", "step_000002.png", "step_000004.png"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["sampler"]["step"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["steps_done"] == 4


def test_resume_after_a_kill_equals_an_uninterrupted_run(samplers, tmp_path):
    run(samplers, tmp_path / "whole")
    run(samplers, tmp_path / "killed", stop_at=2)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 2
    run(samplers, tmp_path / "killed", resume=True)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 4
    for key, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    assert resumed["history"]["losses"] == whole["history"]["losses"]


class ConfiguredSampler(DRRCorrespondenceSampler):
    """A sampler whose state names its stream-defining settings, as ``state_dict()["config"]`` does."""

    def state_dict(self, after=None) -> dict:
        config = {"batch_size": self.batch_size, "views": self.views, "image_size": [self.height, self.width]}
        return super().state_dict(after) | {"config": config, "fingerprint": repr(sorted(config.items()))}


def test_resume_refuses_a_changed_run_listing_the_fields(ct_small, tmp_path):
    from onthefly.checkpoint import ConfigurationMismatchError

    train_part, eval_part = split_volume(ct_small, fraction=0.6)
    first = ConfiguredSampler(volumes=[train_part], seed=1, **TINY_DATA)
    changed = ConfiguredSampler(volumes=[train_part], seed=1, **(TINY_DATA | {"batch_size": 1}))
    config = dict(output=str(tmp_path), steps=4, lr=1e-3, checkpoint_every=2, eval_every=0, log_every=1, progress=False)
    train_correspondence(tiny_model(), first, TrainConfig(**config, stop_at=2))
    attempts = [
        (tiny_model(), changed, config, "sampler.config.batch_size: 2 vs 1"),
        (CorrespondenceConfig.small(d_model=32, heads=2, layers=1, mlp=32, patch_size=16), first, config,
         "model_config.d_model: 16 vs 32"),
        (tiny_model(), first, config | {"lr": 1e-2}, r"train_config.lr: 0.001 vs 0.01.*resume_overrides=\('lr',\)"),
        (tiny_model(), first, config | {"seed": 3}, "train_config.seed: 0 vs 3"),
    ]
    for model_config, sampler, settings, message in attempts:
        with pytest.raises(ConfigurationMismatchError, match=message):
            train_correspondence(model_config, sampler, TrainConfig(**settings, resume=True))
    with pytest.raises(ValueError, match="steps: .*already done 2 steps"):
        train_correspondence(tiny_model(), first, TrainConfig(**config | {"steps": 1}, resume=True))
    # A new learning rate named as an override, and more steps: the run continues to the new end.
    summary = train_correspondence(tiny_model(), first, TrainConfig(**config | {"lr": 1e-2, "steps": 5}, resume=True,
                                                                      resume_overrides=("lr",)))
    assert summary["steps_done"] == 5
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"] == [1e-2]
    assert [int(row["step"]) for row in csv.DictReader(open(tmp_path / "metrics.csv"))] == [1, 2, 3, 4, 5]


def test_sampler_state_names_its_configuration(samplers):
    state = samplers[0].state_dict()
    assert isinstance(state["config"], dict) and isinstance(state["fingerprint"], str)


def test_metrics_log_each_step_once_after_a_kill_between_checkpoints(samplers, tmp_path):
    run(samplers, tmp_path, stop_at=2)
    kept = (tmp_path / "checkpoint.pt").read_bytes()  # the last checkpoint before the kill
    run(samplers, tmp_path, stop_at=3, resume=True)  # logs step 3, then "dies" before its next checkpoint
    (tmp_path / "checkpoint.pt").write_bytes(kept)
    run(samplers, tmp_path, resume=True)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r["eval_ap"]] == [0, 2, 4]


def test_a_planted_checkpoint_is_refused_on_resume(samplers, tmp_path):
    from onthefly.checkpoint import CheckpointError

    class Planted:
        def __reduce__(self):
            return open, (str(tmp_path / "ran"), "w")

    tmp_path.joinpath("out").mkdir()
    torch.save({"model": Planted(), "step": 2}, tmp_path / "out" / "checkpoint.pt")
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises(CheckpointError, match="out/checkpoint.pt is refused"):
        run(samplers, tmp_path / "out", resume=True)
    assert not (tmp_path / "ran").exists()


def test_summary_json_is_strict_when_a_metric_is_nan(samplers, tmp_path, monkeypatch):
    import onthefly.train.correspondence as train_module

    nan_metrics = dict(mse=float("nan"), precision=float("nan"), recall=0.0, ap=float("nan"))
    monkeypatch.setattr(train_module, "correspondence_metrics", lambda predicted, target: dict(nan_metrics))
    summary = run(samplers, tmp_path, steps=1, eval_every=1, checkpoint_every=1)
    assert math.isnan(summary["final_eval"]["precision"])

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert written["final_eval"] == {"mse": None, "precision": None, "recall": 0.0, "ap": None}


def test_cuda_without_cuda_is_refused_not_moved(samplers, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: 'cuda' was asked for, but torch finds no CUDA device"):
        run(samplers, tmp_path, device="cuda")
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu:zero")
    with pytest.raises(ValueError, match="resume_overrides"):
        TrainConfig(resume_overrides=("seed",))


def test_evaluation_uses_a_fixed_stream(samplers):
    from onthefly.models import CorrespondenceModel

    torch.manual_seed(0)
    model = CorrespondenceModel(tiny_model())
    first, _, _ = evaluate_correspondence(model, samplers[1], batches=2)
    second, _, _ = evaluate_correspondence(model, samplers[1], batches=2)
    assert first == second
    assert 0 <= first["ap"] <= 1


def test_split_volume_gives_disjoint_parts_with_correct_affines(ct_small):
    lower, upper = split_volume(ct_small, fraction=0.6)
    axis = int(ct_small.affine[2, :3].abs().argmax())
    assert lower.shape[axis] + upper.shape[axis] == ct_small.shape[axis]

    def z_range(volume: Volume) -> tuple[float, float]:
        corners = torch.tensor([[i, j, k, 1.0] for i in (0, volume.shape[0] - 1) for j in (0, volume.shape[1] - 1)
                                for k in (0, volume.shape[2] - 1)], dtype=torch.float64)
        z = (volume.affine @ corners.T)[2]
        return float(z.min()), float(z.max())

    assert z_range(lower)[1] < z_range(upper)[0]  # inferior part below the superior one, no overlap
    # The parts' voxels are the original's at the same world positions.
    index = torch.tensor([3.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    world = upper.affine @ index
    original = torch.linalg.solve(ct_small.affine, world)
    i, j, k = [int(round(float(x))) for x in original[:3]]
    assert upper.hu[0, 3, 4, 2] == ct_small.hu[0, i, j, k]
    with pytest.raises(ValueError, match="fraction"):
        split_volume(ct_small, fraction=1.5)


def test_bad_train_settings(samplers, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="patch_size"):
        train_correspondence(CorrespondenceConfig.small(patch_size=8), samplers[0], TrainConfig(output=str(tmp_path)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_stay_in_sync(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "onthefly", "train", "correspondence", "--model", "small",
        "--d-model", "16", "--heads", "2", "--layers", "1", "--image-size", "32", "--patch-size", "16",
        "--crop-size", "100", "--spacing", "5", "--batch-size", "2", "--steps", "3", "--eval-every", "3",
        "--eval-batches", "1", "--checkpoint-every", "3", "--lr", "1e-3", "--device", "cpu", "--output", str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True
    assert len(summary["rank_checksums"]) == 2
    first, second = summary["rank_first_batch_sums"]
    assert first != second  # each rank drew its own stream


@pytest.mark.slow
def test_train_classifier_cli_with_pretrained_trunk(tmp_path, capsys):
    from onthefly.cli import main

    common = ["--model", "small", "--d-model", "16", "--heads", "2", "--layers", "2", "--image-size", "32",
              "--patch-size", "16", "--crop-size", "100", "--spacing", "5", "--batch-size", "2", "--steps", "2",
              "--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "2", "--lr", "1e-3", "--device", "cpu"]
    pre = tmp_path / "pre"
    # the classifier's trunk: patch embedding + standard attention, trained on correspondence first
    assert main(["train", "correspondence", *common, "--output", str(pre)]) == 0
    capsys.readouterr()
    state = torch.load(pre / "checkpoint.pt", weights_only=True)
    assert state["model_config"]["backbone"] == "small"
    out = tmp_path / "cls"
    assert main(["train", "classifier", *common, "--backbone", "small", "--init-from", str(pre / "checkpoint.pt"),
                 "--attention-guidance", "--fracture-probability", "0.5", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final_eval"]) >= {"accuracy", "precision", "recall", "kappa"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert "eval_kappa" in rows[0]
    classifier_state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert classifier_state["task"] == "classifier" and "alpha" in classifier_state["model"]


def test_classifier_resume_after_a_kill_equals_an_uninterrupted_run(ct_small, tmp_path):
    from onthefly import FractureConfig
    from onthefly.models import ClassifierConfig
    from onthefly.train import train_classifier

    train_part, eval_part = split_volume(ct_small, fraction=0.6)
    fractures = FractureConfig(probability=0.5, bone_hu=150.0)
    train_sampler = DRRCorrespondenceSampler(volumes=[train_part], seed=1, fractures=fractures, **TINY_DATA)
    eval_sampler = DRRCorrespondenceSampler(volumes=[eval_part], seed=2, fractures=fractures, augmentation=None,
                                            **TINY_DATA)
    model = ClassifierConfig.small(d_model=16, heads=2, layers=2, mlp=32, attention_guidance=True)

    def run_classifier(output, **changes):
        config = TrainConfig(output=str(output), steps=4, lr=1e-3, checkpoint_every=2, eval_every=2,
                             eval_batches=1, log_every=1, progress=False, **changes)
        return train_classifier(model, train_sampler, config, eval_sampler=eval_sampler)

    whole = run_classifier(tmp_path / "whole")
    assert set(whole["final_eval"]) >= {"accuracy", "precision", "recall", "kappa"}
    run_classifier(tmp_path / "killed", stop_at=2)
    run_classifier(tmp_path / "killed", resume=True)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fractures"):
        train_classifier(model, DRRCorrespondenceSampler(volumes=[train_part], **TINY_DATA), TrainConfig(output=str(tmp_path)))
