"""Pictures: written without touching matplotlib's global backend."""

from __future__ import annotations

import matplotlib
import torch

from onthefly import save_views


def test_pictures_leave_the_matplotlib_backend_alone(tmp_path):
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        path = save_views(torch.rand(2, 1, 16, 16), tmp_path / "views.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
