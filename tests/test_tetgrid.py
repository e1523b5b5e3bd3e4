"""Tetrahedral grids: Kuhn-split lattices that are conforming, positively oriented and nested."""

import pytest
import torch

from zerolevel.errors import InputError
from zerolevel.geometry.tetgrid import TetGrid, kuhn_interpolate, lattice_evaluate, lattice_trilinear


def _signed_volumes(grid: TetGrid) -> torch.Tensor:
    v = grid.vertices.double()[grid.tets]
    return torch.linalg.det(v[:, 1:] - v[:, :1]) / 6


def test_regular_grid_fills_the_box_with_positive_conforming_tetrahedra():
    n = 5
    grid = TetGrid.regular(n, bounds=(-1.0, 1.0))
    assert len(grid.vertices) == (n + 1) ** 3 and len(grid.tets) == 6 * n ** 3
    volumes = _signed_volumes(grid)
    assert (volumes > 0).all()
    assert torch.isclose(volumes.sum(), torch.tensor(8.0, dtype=torch.float64))
    # conforming: each triangle is shared by two tetrahedra, except the 2 * 6 n^2 on the box's faces
    faces = torch.cat([grid.tets[:, [1, 2, 3]], grid.tets[:, [0, 2, 3]], grid.tets[:, [0, 1, 3]],
                       grid.tets[:, [0, 1, 2]]]).sort(dim=1).values
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert counts.max() == 2 and (counts == 1).sum() == 12 * n ** 2
    # edges: 3 axis + 3 face-diagonal directions + 1 main diagonal per cube, minus the boundary's
    m = n + 1
    expected = 3 * n * m * m + 3 * n * n * m + n ** 3
    assert len(grid.edges) == expected
    assert (grid.edges[:, 0] < grid.edges[:, 1]).all()


def test_kuhn_interpolation_is_exact_for_linear_functions_and_matches_corners():
    rng = torch.Generator().manual_seed(0)
    corners = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.float64)
    a, b = torch.randn(3, generator=rng, dtype=torch.float64), 0.3
    values = (corners @ a + b).expand(100, 8)
    u = torch.rand(100, 3, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(kuhn_interpolate(values, u), u @ a + b)
    random_values = torch.randn(8, 8, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(kuhn_interpolate(random_values, corners), torch.diagonal(random_values))


def test_subdivision_keeps_a_band_and_the_same_piecewise_linear_function():
    grid = TetGrid.regular(8)
    values = grid.vertices.double().norm(dim=1) - 0.55
    finer, carried = grid.subdivide(values, band=1)
    assert finer.resolution == 16 and len(finer.tets) == 6 * len(finer.cubes)
    assert (_signed_volumes(finer) > 0).all()
    assert len(finer.cubes) < 8 * len(grid.cubes)  # cubes away from the surface are dropped
    # every surface cube of the coarse grid is covered by the band
    assert finer.surface_cubes(carried).sum() >= grid.surface_cubes(values).sum()
    # nested triangulations: the finer grid's interpolant equals the coarse one everywhere in the band
    rng = torch.Generator().manual_seed(1)
    cube = finer.cubes[torch.randint(len(finer.cubes), (2000,), generator=rng)]
    points = finer.bounds[0] + (cube + torch.rand(2000, 3, generator=rng)) * finer.cell
    torch.testing.assert_close(finer.evaluate(points, carried), grid.evaluate(points, values))


def test_evaluate_is_differentiable_and_refuses_points_outside_the_active_cubes():
    grid = TetGrid.regular(4)
    values = torch.zeros(len(grid.vertices), dtype=torch.float64, requires_grad=True)
    point = torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64)
    grid.evaluate(point, values).sum().backward()
    assert torch.isclose(values.grad.sum(), torch.tensor(1.0, dtype=torch.float64))  # partition of unity
    assert (values.grad > 0).sum() <= 4  # one tetrahedron's corners
    band, _ = grid.subdivide(grid.vertices.double().norm(dim=1) - 0.3, band=0)
    with pytest.raises(ValueError, match="outside"):
        band.evaluate(torch.tensor([[0.95, 0.95, 0.95]]), torch.zeros(len(band.vertices)))


def test_save_load_round_trip_and_bad_file(tmp_path):
    grid, _ = TetGrid.regular(6).subdivide(TetGrid.regular(6).vertices.norm(dim=1) - 0.5)
    grid.save(tmp_path / "grid.pt")
    again = TetGrid.load(tmp_path / "grid.pt")
    assert again.resolution == grid.resolution and again.bounds == grid.bounds
    assert torch.equal(again.tets, grid.tets) and torch.equal(again.vertices, grid.vertices)
    (tmp_path / "bad.pt").write_bytes(b"not a grid")
    with pytest.raises(InputError, match="bad.pt"):
        TetGrid.load(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="no such file"):
        TetGrid.load(tmp_path / "missing.pt")


def test_two_subdivisions_carry_values_across_band_faces():
    grid = TetGrid.regular(6)
    values = grid.vertices.double().norm(dim=1) - 0.5
    for _ in range(2):  # the second refines a band grid: its vertices on the band's faces must be found
        grid, values = grid.subdivide(values, band=1)
    torch.testing.assert_close(values, TetGrid.regular(6).evaluate(grid.vertices, TetGrid.regular(6).vertices
                                                                   .double().norm(dim=1) - 0.5))


def test_lattice_evaluate_matches_the_grid_for_a_batch_and_is_inf_outside_the_box():
    grid = TetGrid.regular(4, bounds=(-0.5, 0.5))
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(2, len(grid.vertices), generator=gen, dtype=torch.float64, requires_grad=True)
    inside = torch.rand(2, 50, 3, generator=gen, dtype=torch.float64) - 0.5
    points = torch.cat([inside, torch.tensor([[[0.7, 0.0, 0.0]]] * 2, dtype=torch.float64)], dim=1)
    batched = lattice_evaluate(values, points, 4, (-0.5, 0.5))
    for b in range(2):
        expected = grid.evaluate(inside[b], values[b])
        assert torch.allclose(batched[b, :50], expected, atol=1e-12)
    assert torch.isinf(batched[:, 50]).all()
    batched[:, :50].sum().backward()
    assert values.grad[0].abs().sum() > 0 and values.grad[1].abs().sum() > 0


def test_lattice_trilinear_is_exact_on_vertices_and_affine_functions_and_inf_outside():
    """The fast search interpolant: equal to the grid's function at the lattice's vertices and for an
    affine function (both interpolate it exactly), in every batch row, with the (x, y, z) vertex order;
    off the vertices of a non-affine function it differs from it by less than the values' spread."""
    grid = TetGrid.regular(4, bounds=(-0.5, 0.5))
    gen = torch.Generator().manual_seed(5)
    vertex_points = grid.vertices[torch.randperm(len(grid.vertices), generator=gen)[:30]].double()
    affine = torch.stack([grid.vertices.double() @ torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64),
                          grid.vertices.double() @ torch.tensor([-1.0, 0.2, 0.1], dtype=torch.float64) + 2])
    points = torch.cat([torch.rand(2, 40, 3, generator=gen, dtype=torch.float64) - 0.5,
                        vertex_points.expand(2, -1, -1), torch.tensor([[[0.0, -0.6, 0.0]]] * 2, dtype=torch.float64)], 1)
    torch.testing.assert_close(lattice_trilinear(affine, points, 4, (-0.5, 0.5))[:, :70],
                               lattice_evaluate(affine, points, 4, (-0.5, 0.5))[:, :70])
    rough = torch.randn(2, len(grid.vertices), generator=gen, dtype=torch.float64)
    fast, exact = lattice_trilinear(rough, points, 4, (-0.5, 0.5)), lattice_evaluate(rough, points, 4, (-0.5, 0.5))
    torch.testing.assert_close(fast[:, 40:70], exact[:, 40:70])
    assert (fast[:, :40] - exact[:, :40]).abs().max() < rough.max() - rough.min()
    assert torch.isinf(fast[:, 70]).all()
