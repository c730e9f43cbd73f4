"""Doctest namespace: the examples in the library's docstrings run with ``torch``, ``math`` and onthefly's public names."""

import math

import pytest
import torch

import onthefly


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update({name: getattr(onthefly, name) for name in onthefly.__all__})
    doctest_namespace.update(torch=torch, math=math, otf=onthefly)
