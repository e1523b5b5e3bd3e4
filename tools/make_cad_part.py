"""Make the bundled CAD test part `src/zerolevel/data/cad_bracket.obj`: an exact boolean solid (no
marching cubes, so its edges are truly sharp) of boxes and cylinders with thin walls, a thin rib,
through holes (genus 3) and a bored boss, for the multi-view fit benchmark (`benchmarks/fit_speed.py`)
and tests. The project's own shape, CC0.

Needs manifold3d (exact mesh booleans; not a dependency of the package: the part is shipped):

    pip install manifold3d && python tools/make_cad_part.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from manifold3d import Manifold

OUT = Path(__file__).resolve().parents[1] / "src" / "zerolevel" / "data" / "cad_bracket.obj"
SEGMENTS = 64  # facets per full circle


def box(size, centre) -> Manifold:
    return Manifold.cube(tuple(size), center=True).translate(tuple(centre))


def cylinder(radius: float, height: float, centre, axis: str = "z") -> Manifold:
    c = Manifold.cylinder(height, radius, radius, SEGMENTS, center=True)
    if axis == "x":
        c = c.rotate((0.0, 90.0, 0.0))
    elif axis == "y":
        c = c.rotate((90.0, 0.0, 0.0))
    return c.translate(tuple(centre))


def bracket() -> Manifold:
    """An L bracket: base plate with two bolt holes, an upright wall with a slot, a triangular rib,
    a boss with a bore on the base."""
    base = box((1.6, 1.0, 0.12), (0.0, 0.0, 0.06))
    wall = box((1.6, 0.08, 0.8), (0.0, 0.46, 0.52))
    rib = (box((0.05, 0.6, 0.6), (0.0, 0.0, 0.0))
           .rotate((45.0, 0.0, 0.0))
           .translate((0.55, 0.42, 0.12))
           ^ box((0.05, 0.92, 0.8), (0.55, 0.0, 0.5)))  # clip the rotated plate to a triangle
    boss = cylinder(0.18, 0.35, (-0.4, -0.1, 0.295))
    solid = base + wall + rib + boss
    holes = [cylinder(0.08, 0.5, (0.4, -0.25, 0.06)), cylinder(0.08, 0.5, (-0.1, -0.3, 0.06)),
             cylinder(0.09, 1.0, (-0.4, -0.1, 0.3)),
             box((0.5, 0.3, 0.16), (-0.2, 0.46, 0.62))]  # a slot through the wall
    for hole in holes:
        solid = solid - hole
    return solid


def main() -> None:
    mesh_data = bracket().to_mesh()
    mesh = trimesh.Trimesh(np.asarray(mesh_data.vert_properties)[:, :3], np.asarray(mesh_data.tri_verts),
                           process=True)
    assert mesh.is_watertight and mesh.is_volume, "the boolean result must be a closed solid"
    print(f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces, genus "
          f"{(2 - mesh.euler_number) // 2}, extents {np.round(mesh.extents, 3).tolist()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
