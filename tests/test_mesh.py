"""Mesh utilities: capping the holes of open scans."""

import numpy as np
import trimesh

from zerolevel.geometry.mesh import close_holes


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
