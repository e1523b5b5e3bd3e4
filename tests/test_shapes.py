"""Procedural shape families: every category gives one watertight, normalised, seed-determined mesh."""

import numpy as np
import pytest

from zerolevel.errors import InputError
from zerolevel.geometry import solids
from zerolevel.learn.shapes import CATEGORIES, generate, normalize_unit_diagonal, object_specs


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("seed", [0, 7])
def test_every_category_is_one_watertight_normalised_solid(category, seed):
    mesh = generate(category, seed)
    assert mesh.is_watertight
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume > 0  # faces wound outward
    lo, hi = mesh.bounds
    assert np.linalg.norm(hi - lo) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(0.5 * (lo + hi), 0.0, atol=1e-9)
    assert np.all(np.abs(mesh.vertices) <= 0.5 + 1e-9)
    assert 1_000 < len(mesh.faces) < 80_000


def test_same_seed_same_mesh_other_seed_other_mesh():
    for category in CATEGORIES:
        a, b, c = generate(category, 3), generate(category, 3), generate(category, 4)
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)
        assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)


def test_unknown_category_is_an_input_error():
    with pytest.raises(InputError, match="unknown category 'sofa'"):
        generate("sofa", 0)
    with pytest.raises(InputError, match="sofa"):
        object_specs(["chair", "sofa"], 2)


def test_object_specs_ids_seeds_and_prefix_stability():
    specs = object_specs(["chair", "vase"], 5, seed=1)
    assert [s.object_id for s in specs[:2]] == ["chair_00000", "chair_00001"]
    assert [s.category for s in specs] == ["chair"] * 5 + ["vase"] * 5
    assert len({s.seed for s in specs}) == 10
    assert object_specs(["chair", "vase"], 8, seed=1)[:5] == specs[:5]  # a larger set extends a smaller
    assert object_specs(["chair"], 5, seed=2) != specs[:5]


def test_chair_faces_minus_z():
    """The back rises at +z: the highest part of a chair lies behind its centre."""
    for seed in range(3):
        mesh = generate("chair", seed)
        top = mesh.vertices[mesh.vertices[:, 1] > mesh.bounds[1, 1] - 0.05]
        assert top[:, 2].mean() > 0.1


def test_union_of_a_box_has_the_box_volume():
    """Analytic check of the SDF grid and marching cubes: one box of known volume."""
    mesh = solids.mesh_union([solids.box((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))], resolution=64)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(0.6 * 0.4 * 0.2, rel=0.02)
    np.testing.assert_allclose(mesh.bounds, [[-0.2, 0.0, 0.2], [0.4, 0.4, 0.4]], atol=0.01)


def test_primitive_sdfs_signs():
    square = solids.slab([(0, 0), (1, 0), (1, 1), (0, 1)], 0.1)
    reversed_square = solids.slab([(0, 1), (1, 1), (1, 0), (0, 0)], 0.1)
    points = np.array([[0.5, 0, 0.5], [1.5, 0, 0.5], [0.5, 0.2, 0.5], [0.9, 0.05, 0.2]], np.float32)
    for part in (square, reversed_square):
        np.testing.assert_allclose(part.sdf(points), [-0.1, 0.5, 0.1, -0.05], atol=1e-6)
    tube = solids.revolve([0.0, 1.0], [0.5, 0.5], wall=0.1, bottom=0.2)
    inside_wall, in_cavity, in_floor = [0.45, 0.5, 0], [0.0, 0.5, 0], [0.0, 0.1, 0]
    d = tube.sdf(np.array([inside_wall, in_cavity, in_floor], np.float32))
    assert d[0] < 0 and d[1] > 0 and d[2] < 0
    up = solids.rotation("x", 90) @ np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-12)


def test_normalize_unit_diagonal():
    mesh = generate("vase", 1)
    mesh.apply_scale(3.0)
    mesh.apply_translation((1, 2, 3))
    out = normalize_unit_diagonal(mesh)
    assert np.linalg.norm(np.ptp(out.vertices, axis=0)) == pytest.approx(1.0)
    np.testing.assert_allclose(out.bounds.mean(axis=0), 0.0, atol=1e-12)
