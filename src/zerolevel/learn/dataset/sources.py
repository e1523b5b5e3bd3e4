"""Which objects go into a dataset: generated shapes or mesh files, each with a unique file-safe id
and a key of what its content depends on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trimesh

from ...errors import InputError
from ...geometry.mesh import load_mesh
from .. import shapes

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")  # what a MESHES folder is searched for


@dataclass(frozen=True)
class ObjectSource:
    """One object of a dataset: a generated shape (`seed` set) or a mesh file (`path` set)."""

    id: str
    category: str
    seed: int | None = None
    path: str | None = None

    def mesh(self) -> trimesh.Trimesh:
        """The object normalised to unit bounding-box diagonal, centred (InputError for a bad file)."""
        if self.path is None:
            return shapes.generate(self.category, self.seed)
        return shapes.normalize_unit_diagonal(load_mesh(self.path))

    def key(self) -> dict:
        """What the object's content depends on: the generator's version and seed, or the file's identity."""
        if self.path is None:
            if self.category == "head":
                from ..heads import HEAD_GENERATOR_VERSION

                return {"category": self.category, "seed": self.seed, "generator": HEAD_GENERATOR_VERSION}
            return {"category": self.category, "seed": self.seed, "generator": shapes.GENERATOR_VERSION}
        stat = Path(self.path).stat()
        return {"path": str(Path(self.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    @property
    def crease_deg(self) -> float | None:
        """Smooth-shading crease angle: none for marching-cubes meshes, 60 degrees for mesh files."""
        return None if self.path is None else 60.0


def generated_sources(categories: Sequence[str], count: int, seed: int = 0) -> list[ObjectSource]:
    """`count` procedural objects per category (`shapes.object_specs`); InputError for an unknown category."""
    return [ObjectSource(spec.object_id, spec.category, seed=spec.seed)
            for spec in shapes.object_specs(categories, count, seed)]


def mesh_sources(paths: Iterable[str | Path]) -> list[ObjectSource]:
    """One object per mesh file; folders are searched recursively for `MESH_SUFFIXES` files.

    Category: the name of the file's parent folder ("mesh" for a bare file name such as `bunny.ply`).
    Id: `<category>_<file stem>`, made filename-safe, with `_2`, `_3`, ... against repeats.
    Raises InputError for a missing path or a folder without mesh files (nothing is read yet).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"no mesh files ({', '.join(MESH_SUFFIXES)}) in this folder", path)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("no such file or folder", path)
    sources, taken = [], set()
    for path in files:
        category = _safe_name(path.parent.name) or "mesh"
        base = _safe_name(f"{category}_{path.stem}")
        object_id, k = base, 1
        while object_id in taken:
            k += 1
            object_id = f"{base}_{k}"
        taken.add(object_id)
        sources.append(ObjectSource(object_id, category, path=str(path)))
    return sources


def check_sources(sources: Sequence[ObjectSource]) -> None:
    """InputError unless there is at least one object and the ids are unique file names."""
    if not sources:
        raise InputError("no objects to put in the dataset")
    ids = [s.id for s in sources]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise InputError(f"object ids must be unique, repeated: {', '.join(repeated[:5])}")
    bad = [i for i in ids if not i or _safe_name(i) != i]
    if bad:
        raise InputError(f"object ids must be file names ([A-Za-z0-9._-]), got {bad[0]!r}")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
