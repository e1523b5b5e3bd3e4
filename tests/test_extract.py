"""Mesh extraction: dense marching cubes against analytic shapes, narrow band against dense."""

import math

import numpy as np
import pytest
import torch

from zerolevel.fields.analytic import BoxSDF, SphereSDF, TorusSDF, UnionSDF
from zerolevel.geometry.components import largest_component
from zerolevel.geometry.extract import marching_cubes, mesh_from_grid, sample_grid
from zerolevel.geometry.narrowband import marching_cubes_narrow_band

# off-centre so that the grid is not symmetric about the shape
SPHERE_CENTER, SPHERE_RADIUS = (0.07, -0.05, 0.03), 0.55


def sphere():
    return SphereSDF(SPHERE_CENTER, SPHERE_RADIUS)


def _sorted_vertices(mesh):
    v = np.asarray(mesh.vertices)
    return v[np.lexsort(v.T[::-1])]


def assert_same_mesh(a, b):
    assert len(a.faces) == len(b.faces) and len(a.vertices) == len(b.vertices)
    np.testing.assert_allclose(_sorted_vertices(a), _sorted_vertices(b), rtol=0, atol=1e-6)
    assert a.area == pytest.approx(b.area, rel=1e-9)


@pytest.fixture(scope="module")
def dense_sphere_128():
    return marching_cubes(sphere(), 128)


def test_dense_sphere_matches_analytic_area_volume_and_is_closed_outward(dense_sphere_128):
    mesh = dense_sphere_128
    r = SPHERE_RADIUS
    assert mesh.area == pytest.approx(4 * math.pi * r**2, rel=0.01)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.01)  # positive: outward
    assert mesh.is_watertight
    radial = mesh.triangles_center - np.asarray(SPHERE_CENTER)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", mesh.face_normals, radial) > 0.9)
    assert mesh.metadata["field_evaluations"] == 128**3
    assert mesh.metadata["method"] == "dense"


def test_narrow_band_gives_the_dense_mesh_with_few_evaluations(dense_sphere_128):
    n = 128
    band = marching_cubes_narrow_band(sphere(), n)
    assert_same_mesh(band, dense_sphere_128)
    assert band.is_watertight
    # the band is O(n^2): ~ area / h^2 * (1.7 * L * (block + 1) + block) samples, ~8% here
    evaluations = band.metadata["field_evaluations"]
    assert evaluations < 0.2 * n**3
    assert band.metadata["band_repairs"] == 0  # an exact SDF never needs the repair


@pytest.mark.parametrize("field, n", [(TorusSDF((0.02, 0.01, -0.03), 0.5, 0.18), 96),
                                      (BoxSDF((0.05, 0.0, -0.02), (0.5, 0.35, 0.4)), 97)])
def test_narrow_band_matches_dense_on_other_shapes_and_odd_sizes(field, n):
    # 97 is not a multiple of the block size: padding blocks must be cropped correctly
    assert_same_mesh(marching_cubes_narrow_band(field, n, block_size=4),
                     marching_cubes(field, n))


def test_narrow_band_ratio_shrinks_with_resolution():
    evaluations = marching_cubes_narrow_band(sphere(), 256).metadata["field_evaluations"]
    assert evaluations < 0.07 * 256**3  # ~5%: about half the 128^3 ratio, as O(n^2) / n^3 predicts


def test_box_volume():
    half = (0.5, 0.35, 0.4)
    mesh = marching_cubes(BoxSDF((0.05, 0.0, -0.02), half), 128)
    assert mesh.volume == pytest.approx(8 * np.prod(half), rel=0.01)
    assert mesh.is_watertight


def test_keep_largest_component_drops_the_smaller_sphere():
    field = UnionSDF(SphereSDF((-0.45, 0, 0), 0.4), SphereSDF((0.55, 0, 0), 0.25))
    both = marching_cubes(field, 64)
    assert len(both.split(only_watertight=False)) == 2
    big = 4 / 3 * math.pi * 0.4**3
    for extract in (marching_cubes, marching_cubes_narrow_band):
        mesh = extract(field, 64, keep_largest_component=True)
        assert mesh.volume == pytest.approx(big, rel=0.02)
        assert mesh.bounds[1, 0] < 0.0  # nothing of the right-hand sphere
        assert mesh.metadata["field_evaluations"] > 0
    assert largest_component(both).volume == pytest.approx(big, rel=0.02)


def test_to_world_similarity_is_applied():
    to_world = np.diag([2.0, 2.0, 2.0, 1.0])
    to_world[:3, 3] = (1.0, -2.0, 3.0)
    for extract in (marching_cubes, marching_cubes_narrow_band):
        plain = extract(sphere(), 48)
        world = extract(sphere(), 48, to_world=to_world)
        assert world.volume == pytest.approx(8 * plain.volume, rel=1e-9)
        np.testing.assert_allclose(world.vertices, plain.vertices * 2 + to_world[:3, 3], atol=1e-12)


class SmallMLP(torch.nn.Module):
    """|x| - r plus a small random MLP: a parametric field like a fitted network, (N, 1) output."""

    def __init__(self, amplitude: float = 0.1):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden = torch.nn.Linear(3, 32)
        self.out = torch.nn.Linear(32, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            self.out.weight.mul_(amplitude)
        self.radius = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, points):
        bumps = self.out(torch.nn.functional.softplus(self.hidden(points), beta=10))
        return points.norm(dim=-1, keepdim=True) - self.radius + bumps  # (N, 1)


def test_module_field_chunking_gives_the_same_values_and_mesh():
    field = SmallMLP()
    n = 24
    chunked = sample_grid(field, n, chunk_size=1000)  # 14 calls, the last one short
    axis = torch.linspace(-1, 1, n)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.no_grad():
        whole = field(points).reshape(n, n, n).numpy()
    np.testing.assert_allclose(chunked, whole, atol=1e-6)

    small = marching_cubes(field, n, chunk_size=1000)
    large = marching_cubes(field, n, chunk_size=n**3)
    assert len(small.faces) > 0
    assert_same_mesh(small, large)
    band = marching_cubes_narrow_band(field, 48, chunk_size=500)
    assert_same_mesh(band, marching_cubes(field, 48))
    assert field.radius.requires_grad  # extraction left the module untouched


def test_steeper_field_than_the_bound_is_repaired_by_the_band_check():
    class Steep(torch.nn.Module):  # |grad f| = 3 while we claim 1
        def __init__(self):
            super().__init__()
            self.sphere = sphere()

        def forward(self, points):
            return 3.0 * self.sphere(points)

    field = Steep()
    band = marching_cubes_narrow_band(field, 64, lipschitz=1.0)
    assert band.metadata["band_repairs"] > 0
    assert_same_mesh(band, marching_cubes(field, 64))
    assert band.is_watertight


def test_no_crossing_gives_an_empty_mesh():
    far = SphereSDF((5.0, 0.0, 0.0), 0.5)
    for extract in (marching_cubes, marching_cubes_narrow_band):
        mesh = extract(far, 32)
        assert mesh.is_empty and len(mesh.faces) == 0
        assert mesh.metadata["field_evaluations"] > 0
    assert mesh.metadata["field_evaluations"] < 32**3  # the band pruned everything at coarse level
    assert mesh_from_grid(np.ones((4, 4, 4)), level=0.0).is_empty


def test_callable_and_bad_fields():
    def plain(points):  # a plain function works too
        return points.norm(dim=-1) - 0.5

    assert marching_cubes(plain, 32).is_watertight
    with pytest.raises(ValueError, match="non-finite"):
        marching_cubes(lambda p: p[:, 0] / 0.0, 8)
    with pytest.raises(ValueError, match="expected"):
        marching_cubes(lambda p: p, 8)
    with pytest.raises(ValueError, match="bounds"):
        marching_cubes(plain, 8, bounds=((1, 1, 1), (-1, -1, -1)))


def test_analytic_fields_are_exact_and_differentiable():
    box = BoxSDF((0, 0, 0), (1.0, 2.0, 3.0))
    points = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 3.0, 0.0], [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(box(points).detach().numpy(), [-1.0, 1.0, math.sqrt(2), -0.5],
                               atol=1e-6)
    ball = SphereSDF((0, 0, 0), 0.5)
    ball(torch.tensor([[1.0, 0.0, 0.0]])).sum().backward()
    assert ball.radius.grad.item() == pytest.approx(-1.0)
    torus = TorusSDF((0, 0, 0), 0.5, 0.2)
    np.testing.assert_allclose(torus(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])).detach().numpy(),
                               [-0.2, math.sqrt(0.25) - 0.2], atol=1e-6)
