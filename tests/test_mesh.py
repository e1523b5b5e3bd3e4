"""Mesh utilities: capping the holes of open scans."""

import numpy as np
import trimesh

import pytest

from zerolevel.errors import InputError
from zerolevel.geometry.mesh import close_holes, load_mesh


def _open_sphere(inside_out: bool = False) -> tuple[trimesh.Trimesh, trimesh.Trimesh]:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    # two holes: the faces within 0.3 of either pole (like a scan's unseen base, and a second one)
    centres = sphere.triangles_center
    keep = (np.linalg.norm(centres - [0, 0, 1], axis=1) > 0.3) & (np.linalg.norm(centres - [0, 0, -1], axis=1) > 0.3)
    faces = sphere.faces[keep][:, ::-1] if inside_out else sphere.faces[keep]
    scan = trimesh.Trimesh(sphere.vertices, faces, process=False)
    scan.remove_unreferenced_vertices()
    return sphere, scan


def test_close_holes_caps_every_loop_and_keeps_the_scan():
    sphere, open_sphere = _open_sphere()
    assert not open_sphere.is_watertight
    closed = close_holes(open_sphere)
    assert closed.is_watertight and closed.is_winding_consistent
    assert len(closed.vertices) == len(open_sphere.vertices) + 2  # one centroid per loop
    np.testing.assert_array_equal(closed.faces[: len(open_sphere.faces)], open_sphere.faces)
    # flat caps on two small polar holes lose a little of the sphere's volume, never gain
    assert 0.98 * sphere.volume < closed.volume < sphere.volume


def test_close_holes_turns_an_inside_out_scan_outward():
    sphere, open_sphere = _open_sphere(inside_out=True)
    closed = close_holes(open_sphere)
    assert closed.is_watertight and closed.volume > 0.98 * sphere.volume
    normals_out = np.einsum("ij,ij->i", closed.face_normals, closed.triangles_center)
    assert (normals_out > 0).all()


def test_close_holes_leaves_a_closed_mesh_alone():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    closed = close_holes(sphere)
    np.testing.assert_array_equal(closed.faces, sphere.faces)
    np.testing.assert_allclose(closed.vertices, sphere.vertices)


def _two_group_obj(path):
    """An OBJ with a sphere in group "skin" and a small hidden cube in group "helper"."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    cube = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    lines = [f"v {x} {y} {z}" for x, y, z in np.concatenate([sphere.vertices, cube.vertices])]
    lines.append("g skin")
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in sphere.faces]
    lines.append("g helper")
    offset = len(sphere.vertices) + 1
    lines += [f"f {a + offset} {b + offset} {c + offset}" for a, b, c in cube.faces]
    path.write_text("\n".join(lines) + "\n")
    return sphere, cube


def test_load_mesh_keeps_only_the_named_obj_groups(tmp_path):
    path = tmp_path / "asset.obj"
    sphere, cube = _two_group_obj(path)
    assert len(load_mesh(path).faces) == len(sphere.faces) + len(cube.faces)
    skin = load_mesh(path, groups=["skin"])
    assert len(skin.faces) == len(sphere.faces) and skin.is_watertight
    assert np.isclose(skin.volume, sphere.volume)
    both = load_mesh(path, groups=["skin", "helper"])
    assert len(both.faces) == len(sphere.faces) + len(cube.faces)


def test_load_mesh_names_a_missing_group_and_the_groups_there_are(tmp_path):
    path = tmp_path / "asset.obj"
    _two_group_obj(path)
    with pytest.raises(InputError, match=r"no group hair \(groups: helper, skin\)"):
        load_mesh(path, groups=["hair"])
    sphere_ply = tmp_path / "sphere.ply"
    trimesh.creation.icosphere().export(sphere_ply)
    with pytest.raises(InputError, match="OBJ"):
        load_mesh(sphere_ply, groups=["skin"])
