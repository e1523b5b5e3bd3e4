"""Visual hull: carving from silhouettes contains the object and hugs convex shapes."""

import numpy as np
import torch
import trimesh

from zerolevel.cameras import Cameras
from zerolevel.geometry.extract import marching_cubes
from zerolevel.geometry.visual_hull import VisualHullField, visual_hull_cells
from zerolevel.render.raycast import render_mesh


def test_visual_hull_of_a_sphere_is_close_to_the_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    cameras = Cameras.sphere(20, distance=3.0, fov_deg=40, width=96, height=96)
    masks = torch.as_tensor(render_mesh(sphere, cameras, supersample=2)["mask"])
    field = VisualHullField(cameras, masks)
    # points of the sphere are inside (or on) the hull; points well outside are carved away
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    assert (field(0.57 * dirs) < 0).all()
    assert (field(0.75 * dirs) > 0).all()
    mesh = marching_cubes(field, 96)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(radii) - 0.6) < 0.015  # 20 views carve a sphere to within ~a pixel
    assert radii.min() > 0.6 - 0.02


def test_points_behind_or_outside_every_camera_are_carved():
    cameras = Cameras.look_at(torch.tensor([[0.0, 0.0, 3.0]]), width=32, height=32)
    field = VisualHullField(cameras, torch.ones(1, 32, 32))
    values = field(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0], [5.0, 0.0, 0.0]]))
    assert values.tolist() == [-0.5, 0.5, 0.5]


def test_visual_hull_cells_keep_every_cell_the_object_touches():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    cameras = Cameras.sphere(20, distance=3.0, fov_deg=40, width=96, height=96)
    masks = torch.as_tensor(render_mesh(sphere, cameras, supersample=2)["mask"])
    cells = visual_hull_cells(cameras, masks, 32)
    axis = -1.0 + (torch.arange(32) + 0.5) / 16
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    radius = centres.norm(dim=-1)
    half_diagonal = 3 ** 0.5 / 32
    assert cells[radius < 0.6 + half_diagonal].all()          # conservative: nothing touched is carved
    assert not cells[radius > 0.6 + 6 * half_diagonal].any()  # ... but it is a hull, not the box
    assert cells.float().mean() < 2.0 * (radius < 0.6 + half_diagonal).float().mean()


def test_hull_signed_distance_of_a_sphere_is_a_sub_voxel_distance():
    from zerolevel.geometry.visual_hull import hull_signed_distance

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    cameras = Cameras.sphere(20, distance=3.0, fov_deg=40, width=96, height=96)
    masks = torch.as_tensor(render_mesh(sphere, cameras, supersample=2)["mask"])
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(400, 3, generator=g), dim=-1)
    radii = torch.rand(400, 1, generator=g) * 0.4 + 0.4  # 0.4 to 0.8: both sides, near the surface
    values = hull_signed_distance(cameras, masks, dirs * radii)
    true = radii[:, 0] - 0.6
    # one pixel is ~0.013 here: the hull of 20 views is within about a pixel of the sphere, and
    # the distance is continuous (not a count of cells)
    assert (values - true).abs().median() < 0.01
    assert ((values < 0) == (true < -0.02))[true.abs() > 0.02].all()
    assert (values >= true - 0.02).all()  # the hull holds the object: its distance is never far above
