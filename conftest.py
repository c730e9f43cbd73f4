"""Test-wide settings: hypothesis profiles, and the doctest namespace.

Property tests are deterministic by default (profile ``deterministic``:
derandomised, no example database), so a suite that passes on one machine
passes on every fresh clone and in CI. ``make test-props`` explores instead
(profile ``explore``): every property test with ten times its examples and a
fresh seed, which the Makefile prints; a failure found there becomes an
explicit ``@example`` of its test. The profile is chosen by the environment
variable ``ONTHEFLY_HYPOTHESIS_PROFILE``.
"""

import math
import os

import pytest
import torch
from hypothesis import settings

import onthefly

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
PROFILE = os.environ.get("ONTHEFLY_HYPOTHESIS_PROFILE", "deterministic")
if PROFILE not in ("deterministic", "explore"):
    raise ValueError(f"ONTHEFLY_HYPOTHESIS_PROFILE must be 'deterministic' or 'explore', got {PROFILE!r}")
settings.load_profile(PROFILE)
#: How many times its own number of examples a property test runs under the ``explore`` profile.
EXPLORE_FACTOR = 10


def pytest_collection_modifyitems(config, items):
    """Under ``explore``: keep only the property tests, each with ``EXPLORE_FACTOR`` times its examples."""
    if PROFILE != "explore":
        return
    kept, dropped, scaled = [], [], set()
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is None:
            dropped.append(item)
            continue
        kept.append(item)
        if id(test) not in scaled:  # parametrised items share one function
            scaled.add(id(test))
            test._hypothesis_internal_use_settings = settings(own, max_examples=own.max_examples * EXPLORE_FACTOR)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update({name: getattr(onthefly, name) for name in onthefly.__all__})
    doctest_namespace.update(torch=torch, math=math, otf=onthefly)
