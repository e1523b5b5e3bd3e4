"""Connected pieces: the one mesh rule (shared vertex positions, largest by area) and the voxel rule."""

import numpy as np
import trimesh

from zerolevel.geometry.components import face_components, large_components, largest_component, largest_voxel_component


def test_the_largest_piece_is_the_largest_by_area_not_by_faces():
    big = trimesh.creation.icosphere(subdivisions=1, radius=1.0)  # 80 faces
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.2)  # 1280 faces
    small.apply_translation([3.0, 0.0, 0.0])
    kept = largest_component(trimesh.util.concatenate([small, big]))
    assert len(kept.faces) == len(big.faces) and np.isclose(kept.area, big.area)


def test_large_components_keep_the_pieces_of_a_share_of_the_largest_area():
    """Areas ~12.6, ~0.50 (4%) and ~0.0013: a share of 1% keeps the first two, 1 the largest alone."""
    big = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    leg = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    speck = trimesh.creation.icosphere(subdivisions=1, radius=0.01)
    leg.apply_translation([3.0, 0.0, 0.0])
    speck.apply_translation([0.0, 3.0, 0.0])
    mesh = trimesh.util.concatenate([speck, big, leg])
    kept = large_components(mesh, 0.01)
    assert face_components(kept)[0] == 2 and np.isclose(kept.area, big.area + leg.area)
    assert np.isclose(large_components(mesh, 1.0).area, big.area)
    assert np.isclose(large_components(mesh, 0.0).area, mesh.area)


def test_a_triangle_soup_of_one_surface_is_one_piece_and_is_kept_whole():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    soup = trimesh.Trimesh(sphere.triangles.reshape(-1, 3), np.arange(3 * len(sphere.faces)).reshape(-1, 3),
                           process=False)  # every face with its own three vertices
    assert face_components(soup)[0] == 1
    assert largest_component(soup) is soup


def test_pieces_touching_at_one_vertex_are_one_piece_and_an_empty_mesh_has_none():
    tri = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    mesh = trimesh.Trimesh(tri, [[0, 1, 2], [0, 3, 4]], process=False)
    assert face_components(mesh)[0] == 1
    assert face_components(trimesh.Trimesh())[0] == 0


def test_largest_voxel_component_keeps_the_piece_of_most_voxels():
    grid = np.zeros((6, 6, 6), bool)
    grid[0:2, 0:2, 0:2] = True  # 8 voxels
    grid[3:6, 3:6, 3] = True  # 9 voxels
    grid[2, 2, 2] = True  # touches the first piece only along an edge: a piece of its own
    kept = largest_voxel_component(grid)
    assert kept.sum() == 9 and kept[4, 4, 3] and not kept[0, 0, 0]
    one = np.zeros((3, 3, 3), bool)
    one[1, :, 1] = True
    assert largest_voxel_component(one) is one
