"""The sampling pipeline's stages: config, draw, make, layouts, targets, prefetch, resume identity."""

from __future__ import annotations

import warnings

import pytest
import torch

from onthefly import Augmentation, Prefetcher, SamplerConfig, Volume, make_batch
from onthefly.sampling import (
    AngularSequence,
    BiplanarViews,
    DegenerateDrawWarning,
    DRRCorrespondenceSampler,
    IndependentViews,
    SampleParams,
    SequenceTarget,
    VolumeTarget,
    draw,
    require_fields,
)
from onthefly.sampling.config import MAX_REDRAWS
from onthefly.tasks import BiplanarSampler, NovelViewSampler

SMALL = dict(views=2, image_size=32, patch_size=8, crop_size=150.0, spacing=6.0, batch_size=3)


@pytest.fixture(scope="module")
def small_ct(ct_small) -> Volume:
    return ct_small


def make(small_ct, **changes) -> DRRCorrespondenceSampler:
    return DRRCorrespondenceSampler(**(SMALL | dict(volumes=[small_ct]) | changes))


# ---------------------------------------------------------------------------
# Configuration


def test_config_is_frozen_validated_and_normalised():
    config = SamplerConfig(image_size=(64, 32), patch_size=16, crop_size=(100.0, 120, 140), spacing=2)
    assert config.image_size == (64, 32) and config.grid_shape == (4, 2)
    assert config.crop_size == (100.0, 120.0, 140.0) and config.spacing == (2.0, 2.0, 2.0)
    assert config.crop_voxels() == (50, 60, 70)
    assert isinstance(config.layout, IndependentViews) and config.augmentation == Augmentation()
    with pytest.raises(AttributeError):
        config.views = 3  # frozen
    with pytest.raises(ValueError, match="patch_size"):
        config.replace(patch_size=5)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(views=1), "views"),
        (dict(image_size=(32,)), "image_size"),
        (dict(crop_size=(1.0, 2.0)), "crop_size"),
        (dict(crop_size=float("nan")), "crop_size"),
        (dict(spacing=0.0), "spacing"),
        (dict(sid=(0.0, 10.0), sdd=20.0), "sid"),
        (dict(sdd=1e9), "sdd"),
        (dict(isocenter_jitter=-1.0), "isocenter_jitter"),
        (dict(air_threshold_hu=float("nan")), "air_threshold_hu"),
        (dict(mu_water=float("nan")), "mu_water"),
        (dict(mu_water=0.0), "mu_water"),
        (dict(mu_water=-0.02), "mu_water"),
        (dict(max_redraws=MAX_REDRAWS + 1), "max_redraws"),
        (dict(max_redraws=-1), "max_redraws"),
        (dict(rays_per_patch=10**6), "rays_per_patch"),
        (dict(footprint="hexagon"), "footprint"),
        (dict(footprint="separable", rays_per_patch=2), "rays_per_patch, footprint"),
        (dict(pixel_spacing=float("inf")), "pixel_spacing"),
        (dict(layout="biplanar"), "layout"),
        (dict(layout=BiplanarViews(), views=3), "views"),
        (dict(target=VolumeTarget(size=8), augmentation=Augmentation(geometric=0.5)), "augmentation"),
        (dict(structures=[]), "structures"),
        (dict(shard="yes"), "shard"),
        (dict(layout=BiplanarViews(), alpha=0.3), "alpha: the layout BiplanarViews draws it itself"),
        (dict(layout=AngularSequence(), alpha=(0.0, 1.0)), "alpha: the layout AngularSequence draws it itself"),
        (dict(target=SequenceTarget(), augmentation=None), "target: SequenceTarget reads the angles"),
        (dict(layout=AngularSequence(axis="x"), target=SequenceTarget(axis="z"), augmentation=None),
         r"target: SequenceTarget\(axis='z'\) would report"),
    ],
)
def test_config_refuses_bad_settings_by_name(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SamplerConfig(**changes)


def test_unknown_setting_is_named(small_ct):
    with pytest.raises(TypeError, match="image_sise"):
        make(small_ct, image_sise=32)


def test_fingerprint_is_stable_and_tracks_every_field():
    a, b = SamplerConfig(), SamplerConfig()
    assert a.fingerprint() == b.fingerprint() and a.describe() == b.describe()
    for change in (dict(batch_size=8), dict(beta=(-0.1, 0.1)), dict(augmentation=None), dict(layout=BiplanarViews()),
                   dict(target=VolumeTarget(size=16))):
        assert SamplerConfig(**change).fingerprint() != a.fingerprint(), change


# ---------------------------------------------------------------------------
# Draw and make


def test_a_batch_is_made_from_its_parameters_alone(small_ct, assert_same_params):
    sampler = make(small_ct, seed=9)
    params = draw(sampler.config, sampler.store, 2, seed=9)
    assert isinstance(params, SampleParams) and params.step == 2 and params.batch_size == 3 and params.views == 2
    assert_same_params(params, sampler.draw(2))
    again = make_batch(params, sampler.store, sampler.config)
    batch = sampler.sample(2)
    torch.testing.assert_close(again.images, batch.images, rtol=0, atol=0)
    torch.testing.assert_close(again.correspondence, batch.correspondence, rtol=0, atol=0)
    # Parameters travel as typed host tensors: a moved copy makes the same batch.
    moved = params.to("cpu")
    torch.testing.assert_close(sampler.make_batch(moved).images, batch.images, rtol=0, atol=0)


def test_degenerate_draws_stop_at_max_redraws_and_say_which_check_failed():
    hu = torch.full((30, 30, 30), -1000.0)  # all air: every draw fails the tissue check
    sampler = DRRCorrespondenceSampler(volumes=[Volume.from_tensor(hu, spacing=4.0)], views=2, image_size=16,
                                       patch_size=8, crop_size=60.0, spacing=4.0, batch_size=2, max_redraws=3,
                                       augmentation=None, correspondence=False)
    with pytest.warns(DegenerateDrawWarning, match="min_tissue_fraction"):
        params = sampler.draw(0)
    assert params.degenerate.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_batch(params, sampler.store, sampler.config)  # a flagged sample still renders (air: zeros)


def test_shared_isocenter_layouts_use_view_zero_jitter(small_ct):
    sampler = NovelViewSampler(volumes=[small_ct], image_size=32, patch_size=8, crop_size=150.0, spacing=6.0,
                               batch_size=3, targets=2)
    params = sampler.draw(0)
    assert (params.isocenter == params.isocenter[:, :1]).all()
    independent = make(small_ct, views=3).draw(0)
    assert not (independent.isocenter == independent.isocenter[:, :1]).all()


# ---------------------------------------------------------------------------
# Targets and batch types


def test_batch_type_and_fields_say_what_a_stream_carries(small_ct):
    plain = make(small_ct)
    assert plain.batch_type.__name__ == "DRRBatch" and "correspondence" in plain.batch_fields
    assert "labels" not in plain.batch_fields and "fracture" not in plain.batch_fields
    assert not [name for name in plain.batch_fields if name.startswith("fracture")]  # every fracture field is optional
    biplanar = BiplanarSampler(volumes=[small_ct], image_size=32, patch_size=8, crop_size=150.0, spacing=6.0,
                               batch_size=3, volume_size=8)
    assert biplanar.batch_type.__name__ == "BiplanarBatch" and "volume" in biplanar.batch_fields
    assert type(biplanar.sample(0)) is biplanar.batch_type
    with pytest.raises(ValueError, match="'correspondence'"):
        require_fields(biplanar, ("correspondence",), consumer="a correspondence model")
    require_fields(plain, ("correspondence", "images"), consumer="a correspondence model")


def test_task_samplers_compose_a_layout_and_a_target(small_ct):
    sampler = BiplanarSampler(volumes=[small_ct], image_size=32, patch_size=8, crop_size=150.0, spacing=6.0,
                              batch_size=2, volume_size=8, lateral="right")
    assert isinstance(sampler.config.layout, BiplanarViews) and sampler.config.layout.lateral == "right"
    assert isinstance(sampler.config.target, VolumeTarget) and sampler.config.target.size == 8
    # The same composition, spelled out on the generic stream, gives the same batches.
    generic = DRRCorrespondenceSampler(volumes=[small_ct], image_size=32, patch_size=8, crop_size=150.0, spacing=6.0,
                                       batch_size=2, views=2, layout=BiplanarViews(lateral="right"),
                                       target=VolumeTarget(size=8), correspondence=False, augmentation=None)
    torch.testing.assert_close(generic.sample(1).volume, sampler.sample(1).volume, rtol=0, atol=0)
    with pytest.raises(ValueError, match="layout"):
        BiplanarSampler(volumes=[small_ct], layout=IndependentViews())


# ---------------------------------------------------------------------------
# Resume identity


def test_state_from_another_configuration_is_refused_with_the_fields(small_ct):
    state = make(small_ct, seed=1).state_dict()
    assert {"seed", "rank", "step", "config", "fingerprint", "store"} <= set(state)
    other = make(small_ct, seed=1, batch_size=4, beta=0.0)
    with pytest.raises(ValueError, match="batch_size: saved 3, now 4") as error:
        other.load_state_dict(state)
    assert "beta" in str(error.value)
    other.load_state_dict(state, allow_config_change=True)  # on purpose
    hu = small_ct.hu.clone()
    hu[0, :5] += 100.0
    changed_ct = Volume(hu=hu, affine=small_ct.affine, labels=small_ct.labels, label_names=small_ct.label_names)
    with pytest.raises(ValueError, match="other CTs"):
        make(changed_ct, seed=1).load_state_dict(state)
    make(small_ct, seed=1).load_state_dict(state)  # same configuration, same CTs: accepted


# ---------------------------------------------------------------------------
# Prefetcher


def test_prefetcher_yields_the_stream_in_order_and_records_the_position(small_ct):
    sampler = make(small_ct, seed=5, steps=4, augmentation=Augmentation(noise=0.02))
    batches = list(Prefetcher(sampler, depth=2))
    assert [batch.step for batch in batches] == [0, 1, 2, 3]
    assert sampler.state_dict()["step"] == 4
    for batch in batches:
        torch.testing.assert_close(batch.images, sampler.sample(batch.step).images, rtol=0, atol=0)
    resumed = make(small_ct, seed=5, steps=4, augmentation=Augmentation(noise=0.02))
    resumed.seek(2)
    assert [batch.step for batch in Prefetcher(resumed, depth=3)] == [2, 3]


def test_prefetcher_stops_early_and_raises_errors_in_the_consumer(small_ct):
    sampler = make(small_ct, seed=5)
    stream = iter(Prefetcher(sampler, depth=2, start=0))
    next(stream)
    stream.close()  # the background thread ends instead of filling memory
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(sampler, depth=0)

    class Broken:
        steps, device = None, torch.device("cpu")

        def state_dict(self):
            return {"step": 0}

        def sample(self, step):
            raise RuntimeError("no CT today")

    with pytest.raises(RuntimeError, match="no CT today"):
        next(iter(Prefetcher(Broken())))


def test_convention_shard_gives_each_rank_its_own_cts(small_ct):
    from onthefly.sampling.draw import candidate_volumes

    sampler = make(small_ct, volumes=[small_ct, small_ct, small_ct])
    shares = [candidate_volumes(sampler.store, rank=r, world=2, shard=None).tolist() for r in range(2)]
    assert shares == [[0, 2], [1]]
    assert candidate_volumes(sampler.store, rank=1, world=2, shard=False).tolist() == [0, 1, 2]
    assert candidate_volumes(sampler.store, rank=1, world=4, shard=None).tolist() == [0, 1, 2]  # too few CTs
    with pytest.raises(ValueError, match="shard"):
        candidate_volumes(sampler.store, rank=1, world=4, shard=True)


def test_prefetcher_threads_apply_to_its_own_thread_only(small_ct):
    before = torch.get_num_threads()
    sampler = make(small_ct, steps=2)
    assert [batch.step for batch in Prefetcher(sampler, threads=1)] == [0, 1]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        Prefetcher(sampler, threads=0)


def test_resident_crops_from_host_indices_equal_the_indexed_gather():
    """The sliced copy of boxes (host indices) and the advanced-index gather (device or traced indices) agree."""
    from onthefly.sampling.store import _crop_index, _gather_crops

    generator = torch.Generator().manual_seed(0)
    stack = torch.rand(3, 9, 8, 7, generator=generator)
    labels = torch.randint(0, 50, (3, 9, 8, 7), generator=generator, dtype=torch.int16)
    volume_index = torch.tensor([2, 0, 2, 1])
    start = torch.tensor([[0, 0, 0], [4, 3, 2], [5, 4, 3], [1, 2, 3]])
    size = (4, 4, 4)
    for values in (stack, labels):
        sliced = _gather_crops(values, volume_index, start, size)
        indexed = values[_crop_index(volume_index, start, size)]
        assert sliced.shape == (4, *size) and sliced.dtype == values.dtype
        assert torch.equal(sliced, indexed)
        assert torch.equal(sliced[2], values[2, 5:9, 4:8, 3:7])
        sliced[0].fill_(0)  # a new tensor: the CT stack is untouched
        assert torch.equal(values[2, :4, :4, :4], indexed[0])
    empty = _gather_crops(stack, volume_index[:0], start[:0], size)
    assert empty.shape == (0, *size)
