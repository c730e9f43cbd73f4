"""Checkpoints: plain data with a checksum, refused payloads and damage, the resume check, metrics and JSON."""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from onthefly.checkpoint import (
    CheckpointError,
    ConfigurationMismatchError,
    TRAILER_LENGTH,
    check_resume,
    load_checkpoint,
    prepare_metrics,
    save_checkpoint,
    settings_differences,
    strict_json,
    write_json,
)


def payload() -> dict:
    return {"model": {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.zeros(3, dtype=torch.bfloat16)},
            "step": 7, "lr": 1e-3, "name": "run", "betas": (0.9, 0.999), "state": {0: {"step": torch.tensor(7.0)}},
            "history": {"losses": [0.5, float("nan")], "initial_eval": None}, "flag": True}


class Planted:
    """Unpickling this object would create the file ``marker``: code run by loading a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def add_valid_trailer(path: Path) -> None:
    """Append a correct checksum, as someone forging a checkpoint could."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "ab") as handle:
        handle.write(b"\nonthefly-sha256:" + digest.encode() + b"\n")


# ----------------------------------------------------------------- round trip


def test_round_trip_keeps_plain_values_and_torch_load_still_reads_it(tmp_path):
    path = save_checkpoint(payload(), tmp_path / "checkpoint.pt")
    state = load_checkpoint(path)
    expected = payload()
    torch.testing.assert_close(state["model"]["weight"], expected["model"]["weight"])
    assert state["model"]["bias"].dtype == torch.bfloat16
    assert (state["step"], state["lr"], state["name"], state["betas"], state["flag"]) == (7, 1e-3, "run", (0.9, 0.999), True)
    assert state["history"]["losses"][0] == 0.5 and math.isnan(state["history"]["losses"][1])
    plain = torch.load(path, weights_only=True)  # the trailer does not stop torch's own reader
    torch.testing.assert_close(plain["state"][0]["step"], torch.tensor(7.0))
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize(
    "bad, where",
    [({"a": {"b": Path("x")}}, "payload.a.b"), ({"items": [1, object()]}, r"payload.items\[1\]"),
     ({"key": {(1, 2): 3}}, "payload.key"), ({"dtype": torch.float32}, "payload.dtype")],
)
def test_objects_other_than_plain_data_are_not_written(tmp_path, bad, where):
    with pytest.raises(TypeError, match=where):
        save_checkpoint(bad, tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt").exists()


# ------------------------------------------------------ payloads that run code


@pytest.mark.parametrize("forged_checksum", [False, True])
def test_a_planted_payload_is_refused_without_running(tmp_path, forged_checksum):
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Planted(marker), "step": 1}, path)
    if forged_checksum:
        add_valid_trailer(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=r"resume: the checkpoint .*checkpoint.pt is refused: it holds "
                                                  r"Python objects .*could run code"):
            load_checkpoint(path, name="resume")
    assert not marker.exists()


# ------------------------------------------------------------------- damage


def test_every_flipped_byte_is_detected(tmp_path):
    path = save_checkpoint(payload(), tmp_path / "checkpoint.pt")
    original = path.read_bytes()
    size = len(original)
    positions = sorted({*range(0, size, max(1, size // 60)), *range(size - TRAILER_LENGTH, size)})
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="checkpoint.pt is damaged"):
            load_checkpoint(path)


def _wrong_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: len(data) // 2], "no checksum trailer"),
        (lambda data: data[: len(data) - TRAILER_LENGTH - 10], "no checksum trailer"),
        (lambda data: b"", "empty"),
        (lambda data: bytes(range(256)) * 4, "no checksum trailer"),
        (lambda data: _wrong_zip(), "RuntimeError"),
    ],
    ids=["half", "cut-before-trailer", "empty", "garbage", "wrong-zip"],
)
@pytest.mark.filterwarnings("ignore:.*carries no checksum")
def test_damaged_files_name_the_file_and_say_so(tmp_path, damage, reason):
    path = save_checkpoint(payload(), tmp_path / "checkpoint.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=rf"--init-from: the checkpoint .*checkpoint.pt is damaged \(.*{reason}"):
        load_checkpoint(path, name="--init-from")


def test_missing_keys_are_damage_not_key_errors(tmp_path):
    path = save_checkpoint({"model": {}, "step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"damaged \(missing keys \['optimizer'\]\)"):
        load_checkpoint(path, required=("model", "optimizer", "step"))
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="resume: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", name="resume")


def test_a_file_saved_without_checksum_loads_with_a_warning(tmp_path):
    torch.save({"weight": torch.ones(2)}, tmp_path / "weights.pt")
    with pytest.warns(UserWarning, match="carries no checksum"):
        state = load_checkpoint(tmp_path / "weights.pt")
    torch.testing.assert_close(state["weight"], torch.ones(2))


# --------------------------------------------------------------------- resume


def saved_run(**changes) -> dict:
    run = {
        "task": "correspondence", "step": 4, "world": 1,
        "model_config": {"backbone": "small", "d_model": 64, "backbone_weights": "a.pt"},
        "train_config": {"steps": 10, "lr": 1e-3, "warmup_steps": 0, "seed": 0, "output": "a", "device": "cpu",
                         "resume": False, "stop_at": 4, "log_every": 10, "resume_overrides": ()},
        "sampler": {"seed": 1, "rank": 0, "step": 4, "config": {"batch_size": 16, "crop_size": [120.0] * 3},
                    "fingerprint": "abc"},
    }
    for key, value in changes.items():
        run[key] = run[key] | value if isinstance(value, dict) else value
    return run


def given_run(**changes) -> dict:
    run = saved_run(**changes)
    return dict(task=run["task"], model_config=run["model_config"], world=run["world"],
                train_config=run["train_config"] | {"resume": True, "stop_at": None},
                sampler_state=run["sampler"] | {"step": 0})


def test_the_same_run_resumes_whatever_drives_it():
    given = given_run(model_config={"backbone_weights": None},
                      train_config={"steps": 20, "output": "b", "device": "cuda", "log_every": 1},
                      sampler={"rank": 3, "config": {"batch_size": 16, "crop_size": (120.0, 120.0, 120.0)}})
    check_resume(saved_run(), path="checkpoint.pt", **given)


def test_every_differing_field_is_listed_saved_vs_given():
    given = given_run(model_config={"d_model": 512}, train_config={"lr": 1e-4},
                      sampler={"seed": 2, "config": {"batch_size": 8, "crop_size": [120.0] * 3}})
    with pytest.raises(ConfigurationMismatchError) as caught:
        check_resume(saved_run(), path="checkpoint.pt", **given)
    assert caught.value.differences == {
        "model_config.d_model": (64, 512), "train_config.lr": (1e-3, 1e-4),
        "sampler.config.batch_size": (16, 8), "sampler.seed": (1, 2)}
    message = str(caught.value)
    assert "model_config.d_model: 64 vs 512" in message and "resume_overrides=('lr',)" in message


def test_a_new_lr_is_accepted_only_when_named_as_an_override():
    given = given_run(train_config={"lr": 1e-4, "resume_overrides": ("lr",)})
    check_resume(saved_run(), path="checkpoint.pt", **given)


def test_another_task_world_or_fingerprint_is_refused():
    for changes, field in [(dict(task="classifier"), "task"), (dict(world=2), "world"),
                           (dict(sampler={"fingerprint": "xyz"}), "sampler.fingerprint")]:
        with pytest.raises(ConfigurationMismatchError, match=field):
            check_resume(saved_run(), path="checkpoint.pt", **given_run(**changes))


def test_a_sampler_without_config_is_compared_on_what_it_gives():
    saved = saved_run(sampler={"seed": 1, "rank": 0, "step": 4})
    del saved["sampler"]["config"], saved["sampler"]["fingerprint"]
    check_resume(saved, path="checkpoint.pt", **given_run())
    with pytest.raises(ConfigurationMismatchError, match="sampler.seed: 1 vs 5"):
        check_resume(saved, path="checkpoint.pt", **given_run(sampler={"seed": 5}))


def test_steps_may_grow_but_not_fall_below_the_step_done():
    with pytest.raises(ValueError, match="steps: .*already done 4 steps"):
        check_resume(saved_run(), path="checkpoint.pt", **given_run(train_config={"steps": 3}))


def test_settings_differences_treats_tuples_as_lists_and_nests():
    saved = {"a": (1, 2), "b": {"c": 1.0, "d": "x"}, "only_saved": 1}
    given = {"a": [1, 2], "b": {"c": 1.0, "d": "y"}, "only_given": 2}
    assert settings_differences(saved, given) == {"b.d": ("x", "y")}


# ---------------------------------------------------------------- metrics, JSON


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n0,\n1,0.5\n2,0.4\n3,0.3\n3,\n")
    assert prepare_metrics(path, ["step", "loss"], resumed_step=2) == 2
    assert path.read_text().splitlines() == ["step,loss", "0,", "1,0.5", "2,0.4"]
    assert prepare_metrics(path, ["step", "loss"], resumed_step=0) == 0
    assert path.read_text().splitlines() == ["step,loss"]
    assert prepare_metrics(tmp_path / "new.csv", ["step", "loss"], resumed_step=5) == 0  # no log yet: a header
    assert (tmp_path / "new.csv").read_text().splitlines() == ["step,loss"]


def _strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_written_by_the_library_is_strict(tmp_path):
    value = {"precision": float("nan"), "top": float("inf"), "nested": [1.0, float("-inf"), (2, 3)],
             "tensor": torch.tensor(float("nan")), "path": Path("a/b")}
    write_json(tmp_path / "summary.json", value)
    assert _strict_loads((tmp_path / "summary.json").read_text()) == {
        "precision": None, "top": None, "nested": [1.0, None, [2, 3]], "tensor": None, "path": "a/b"}
    assert strict_json({"x": 1.5}) == {"x": 1.5}
