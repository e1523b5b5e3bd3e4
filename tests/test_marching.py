"""Differentiable marching tetrahedra: an analytic sphere's area and volume, watertight outward meshes,
degenerate values without NaNs, and gradients of a surface energy against finite differences."""

import math

import numpy as np
import torch
import trimesh

from zerolevel.geometry.marching import TRIANGLE_COUNT, marching_tetrahedra, marching_tetrahedra_batch
from zerolevel.geometry.tetgrid import TetGrid

RADIUS = 0.7


def _mesh(verts: torch.Tensor, faces: torch.Tensor) -> trimesh.Trimesh:
    return trimesh.Trimesh(verts.detach().numpy(), faces.numpy(), process=False)


def test_sphere_area_and_volume_watertight_and_outward():
    grid = TetGrid.regular(24)
    sdf = grid.vertices.double().norm(dim=1) - RADIUS
    verts, faces = marching_tetrahedra(grid.vertices.double(), grid.tets, sdf)
    mesh = _mesh(verts, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert abs(mesh.area / (4 * math.pi * RADIUS ** 2) - 1) < 0.02
    assert abs(mesh.volume / (4 / 3 * math.pi * RADIUS ** 3) - 1) < 0.02  # > 0: faces wind outward
    assert mesh.euler_number == 2  # one sphere
    # shared vertices: one per crossed grid edge, and every one used
    inside = sdf < 0
    crossed = (inside[grid.edges[:, 0]] != inside[grid.edges[:, 1]]).sum()
    assert len(verts) == crossed and len(np.unique(faces.numpy())) == crossed
    np.testing.assert_allclose(np.linalg.norm(verts.numpy(), axis=1), RADIUS, atol=grid.cell ** 2)


def test_table_gives_one_triangle_per_lone_corner_and_two_per_split():
    for code in range(16):
        inside = bin(code).count("1")
        assert TRIANGLE_COUNT[code] == {0: 0, 1: 1, 2: 2, 3: 1, 4: 0}[inside]


def test_subdivided_grid_gives_the_same_surface():
    coarse = TetGrid.regular(10)
    sdf = coarse.vertices.double().norm(dim=1) - RADIUS
    fine, fine_sdf = coarse.subdivide(sdf, band=1)
    a = _mesh(*marching_tetrahedra(coarse.vertices.double(), coarse.tets, sdf))
    b = _mesh(*marching_tetrahedra(fine.vertices.double(), fine.tets, fine_sdf))
    assert b.is_watertight and len(b.faces) > 3 * len(a.faces)
    # equal up to the float32 grid coordinates
    assert math.isclose(a.area, b.area, rel_tol=1e-6) and math.isclose(a.volume, b.volume, rel_tol=1e-6)


def test_degenerate_values_give_no_nans():
    grid = TetGrid.regular(4)  # vertices at multiples of 0.5: |x|_inf - 0.5 is exactly 0 on many
    sdf = (grid.vertices.double().abs().max(dim=1).values - 0.5).requires_grad_(True)
    assert (sdf == 0).sum() > 20
    verts, faces = marching_tetrahedra(grid.vertices.double(), grid.tets, sdf)
    mesh = _mesh(verts, faces)
    assert torch.isfinite(verts).all() and mesh.is_watertight and mesh.volume > 0
    _mesh_area(verts, faces).backward()
    assert torch.isfinite(sdf.grad).all()
    for constant in (1.0, -1.0, 0.0):  # all outside, all inside, all exactly zero: no surface
        verts, faces = marching_tetrahedra(grid.vertices, grid.tets, torch.full((len(grid.vertices),), constant))
        assert verts.shape == (0, 3) and faces.shape == (0, 3)


def _mesh_area(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = verts[faces]
    return 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1).sum()


def test_surface_energy_gradients_match_finite_differences():
    grid = TetGrid.regular(6)
    rng = torch.Generator().manual_seed(0)
    sdf = grid.vertices.double().norm(dim=1) - 0.62 + 0.02 * torch.randn(len(grid.vertices), generator=rng,
                                                                         dtype=torch.float64)
    offsets = 0.01 * torch.randn(len(grid.vertices), 3, generator=rng, dtype=torch.float64)

    def energy(values, shift):
        verts, faces = marching_tetrahedra(grid.vertices.double() + shift, grid.tets, values)
        # area plus a position-dependent term, so that both moves along and across edges count
        return _mesh_area(verts, faces) + (verts[:, 0] ** 2 * verts[:, 1]).sum()

    values = sdf.clone().requires_grad_(True)
    shift = offsets.clone().requires_grad_(True)
    energy(values, shift).backward()
    inside = sdf < 0
    near = torch.unique(grid.edges[inside[grid.edges[:, 0]] != inside[grid.edges[:, 1]]])[:12]
    eps = 1e-6
    for i in near:
        e = torch.zeros_like(sdf)
        e[i] = eps
        fd = (energy(sdf + e, offsets) - energy(sdf - e, offsets)) / (2 * eps)
        assert torch.isclose(values.grad[i], fd, rtol=1e-5, atol=1e-8), (int(i), values.grad[i], fd)
        d = torch.zeros_like(offsets)
        d[i, 2] = eps
        fd = (energy(sdf, offsets + d) - energy(sdf, offsets - d)) / (2 * eps)
        assert torch.isclose(shift.grad[i, 2], fd, rtol=1e-5, atol=1e-8)


def test_a_batch_gives_each_samples_mesh_and_gradient():
    grid = TetGrid.regular(10)
    centres = torch.tensor([[0.0, 0, 0], [0.2, -0.1, 0], [0, 0, 0], [0.1, 0.3, 0.2]], dtype=torch.float64)
    radii = torch.tensor([0.5, 0.3, 0.0, 0.4], dtype=torch.float64)  # sample 2: empty (no surface)
    sdf = ((grid.vertices.double()[None] - centres[:, None]).norm(dim=2) - radii[:, None]).requires_grad_()
    packed = marching_tetrahedra_batch(grid.vertices.double(), grid.tets, sdf)
    assert len(packed) == 4 and packed.face_counts()[2] == 0
    weights = torch.randn(len(packed.verts), 3, dtype=torch.float64)
    (packed.verts * weights).sum().backward()
    for b in range(4):
        one = sdf.detach()[b].clone().requires_grad_()
        verts, faces, edges = marching_tetrahedra(grid.vertices.double(), grid.tets, one, return_edges=True)
        v0, v1 = packed.vert_first[b], packed.vert_first[b + 1]
        torch.testing.assert_close(packed.verts[v0:v1], verts)
        torch.testing.assert_close(packed.faces[packed.face_first[b]:packed.face_first[b + 1]] - v0, faces)
        torch.testing.assert_close(packed.edges[v0:v1] - b * len(grid.vertices), edges)
        (verts * weights[v0:v1]).sum().backward()
        torch.testing.assert_close(sdf.grad[b], one.grad)
