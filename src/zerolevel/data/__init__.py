"""Bundled example data: the Spot cow (CC0, see LICENSE-spot.txt)."""

from importlib.resources import files
from pathlib import Path


def example_mesh_path() -> Path:
    """Path to the bundled example mesh `spot.obj` (CC0, Keenan Crane)."""
    return Path(str(files(__package__) / "spot.obj"))
