"""Regression pin: the exact bytes of a few sampler batches, from the bundled CT, a prepared bank and phantoms.

Every tensor of a batch (images, correspondence, cameras, crop boxes and
affines, operations, labels, the drawn parameters) is hashed with SHA-256,
and so are the sampler's fingerprint and state (what a checkpoint stores).
The constants were taken from this version's output on an x86-64 CPU with
one intra-op thread; a change of any of them is a change of what the library
makes. Another torch version may round differently: the pin then skips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from onthefly import DRRCorrespondenceSampler, PhantomSource, SamplerConfig, Volume

PINNED_TORCH = "2.13.0+cpu"
SMALL = dict(display="minmax", views=2, image_size=32, patch_size=8, crop_size=150.0, spacing=6.0, batch_size=3)
BANK = dict(display="minmax", views=2, image_size=32, patch_size=8, crop_size=24.0, spacing=2.0, batch_size=2, min_tissue_fraction=0.1,
            min_projection_fraction=0.1)
PHANTOM = dict(display="minmax", views=2, image_size=32, patch_size=8, crop_size=96.0, spacing=4.0, batch_size=2, augmentation=None,
               min_tissue_fraction=0.1, min_projection_fraction=0.1)
BATCH_FIELDS = ("images", "correspondence", "carm", "operations", "volume_index", "crop_start", "crop_stop",
                "crop_affine", "params", "labels", "volume")

EXPECTED = {
    "ct": "3d7c329d04e68af30e6d6e833579cbd4ca522c60c856db21c451548da3f1fcbf",
    "ct_structures": "562e452d0c00d29cf5560893a9283f674b68939e7fc5eed42da6a080473693b8",
    "bank": "2e6775320f028b60e4a3cc715a8c7c9942dba2bfe7e51f08f03e2d5370f75e05",
    "phantom": "1eb0377c6c4162d4e83148a76a4576d1584fb050ea7eed02271f947e9a592099",
}

pytestmark = pytest.mark.skipif(torch.__version__ != PINNED_TORCH,
                                reason=f"batch bytes pinned with torch {PINNED_TORCH}")


def _update(digest, value) -> None:
    """Feed ``value`` (tensors, dataclasses, mappings, sequences, plain values) to ``digest`` in a fixed order."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(type(value).__name__.encode())
        for item in dataclasses.fields(value):
            digest.update(item.name.encode())
            _update(digest, getattr(value, item.name))
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"sequence {len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
    else:  # objects without a value identity (layouts, distributions): their type
        digest.update(type(value).__name__.encode())


def batch_fingerprint(batch) -> str:
    digest = hashlib.sha256()
    for name in BATCH_FIELDS:
        digest.update(name.encode())
        _update(digest, getattr(batch, name))
    return digest.hexdigest()


def stream_fingerprint(sampler, steps=(0, 1)) -> str:
    """Hash of batches ``steps`` and of the sampler's fingerprint and state."""
    digest = hashlib.sha256()
    digest.update(sampler.fingerprint().encode())
    digest.update(json.dumps(sampler.state_dict(), sort_keys=True, default=str).encode())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in steps:
            digest.update(batch_fingerprint(sampler.sample(step)).encode())
    finally:
        torch.set_num_threads(threads)
    return digest.hexdigest()


def bank_folder(make_phantom_hu, folder):
    from onthefly.sampling.preparation import CTSource, prepare

    cts = []
    for seed, shape in enumerate([(14, 16, 18), (18, 14, 16), (16, 18, 14)]):
        hu = make_phantom_hu(shape, seed=seed).round()
        labels = (hu > -300).to(torch.int16) + (hu > 300).to(torch.int16)
        cts.append(Volume.from_tensor(hu, spacing=2.0, labels=labels))
    sources = [CTSource(name=f"ct{i}", patient=f"p{i}", item=ct) for i, ct in enumerate(cts)]
    prepare(sources, folder, spacing=2.0, progress=False)
    return folder


def streams(ct_small, make_phantom_hu, folder) -> dict[str, str]:
    return {
        "ct": stream_fingerprint(DRRCorrespondenceSampler(volumes=[ct_small], seed=3, **SMALL)),
        "ct_structures": stream_fingerprint(DRRCorrespondenceSampler(
            volumes=[ct_small], seed=4, structures=(1,), rank=1, **SMALL), steps=(2,)),
        "bank": stream_fingerprint(DRRCorrespondenceSampler(volumes=str(bank_folder(make_phantom_hu, folder)),
                                                            seed=1, **BANK)),
        "phantom": stream_fingerprint(DRRCorrespondenceSampler(
            volumes=PhantomSource(regions=("wrist", "hand"), seeds=range(100, 104)), seed=5, **PHANTOM), steps=(0,)),
    }


def test_batches_are_bit_identical_to_the_pinned_ones(ct_small, make_phantom_hu, tmp_path):
    assert streams(ct_small, make_phantom_hu, tmp_path / "bank") == EXPECTED


def test_a_config_passed_whole_makes_the_same_stream(ct_small):
    by_fields = DRRCorrespondenceSampler(volumes=[ct_small], seed=3, **SMALL)
    by_config = DRRCorrespondenceSampler(volumes=[ct_small], seed=3, config=SamplerConfig(**SMALL))
    assert by_config.config == by_fields.config and by_config.fingerprint() == by_fields.fingerprint()
    assert batch_fingerprint(by_config.sample(0)) == batch_fingerprint(by_fields.sample(0))
    with pytest.raises(TypeError, match="config, views: give a SamplerConfig or its fields, not both"):
        DRRCorrespondenceSampler(volumes=[ct_small], config=SamplerConfig(**SMALL), views=3)
    with pytest.raises(TypeError, match="config: expected a SamplerConfig"):
        DRRCorrespondenceSampler(volumes=[ct_small], config=dict(SMALL))
    with pytest.raises(TypeError):
        SamplerConfig(2)  # keyword-only
