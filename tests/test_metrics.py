"""Metrics against analytic expectations: concentric spheres, boxes, flipped and open meshes.

Distances are checked against closed forms (the gap between concentric spheres), IoU against exact
polyhedron volumes, and the fast occupancy paths (rays, grid lines) against the exact winding number.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import trimesh

from zerolevel import metrics
from zerolevel.geometry import occupancy as occ
from zerolevel.errors import InputError
from zerolevel.render.raycast import MeshRayCaster


def sphere(radius: float = 1.0, subdivisions: int = 4) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def open_sphere() -> trimesh.Trimesh:
    """A unit icosphere with a few faces removed near the +z pole: a small hole."""
    mesh = sphere(1.0, 3)
    keep = mesh.triangles_center[:, 2] < 0.97
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)


def random_points(n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.3, 1.3, size=(n, 3))


# ---------------------------------------------------------------------------------------------- surface


def test_sampling_is_seeded_and_area_weighted():
    mesh = trimesh.creation.box((2.0, 1.0, 1.0))
    a, na = metrics.sample_surface(mesh, 20_000, seed=3)
    b, _ = metrics.sample_surface(mesh, 20_000, seed=3)
    assert a.shape == (20_000, 3) and na.shape == (20_000, 3)
    np.testing.assert_array_equal(a, b)
    # the two 1x1 end faces (x = +-1) hold 2 / 10 of the area
    on_ends = np.isclose(np.abs(a[:, 0]), 1.0)
    assert abs(on_ends.mean() - 0.2) < 0.01
    interior = on_ends & np.all(np.abs(a[:, 1:]) < 0.49, axis=1)  # not on an edge shared with a side
    np.testing.assert_allclose(np.abs(na[interior, 0]), 1.0)


def test_identical_meshes_score_the_sampling_floor():
    # Prediction and GT are sampled independently (seed, seed + 1), so a mesh against itself is not
    # exactly 0: the nearest independent sample lies ~0.5 / sqrt(density) away. On a sphere of area
    # 4 pi / 12 ~ 1.05 (unit bbox diagonal) with 200k samples that is ~0.0011, and a distance beyond
    # tau = 0.005 has probability exp(-density pi tau^2) ~ 1e-7.
    mesh = sphere(1.0, 4)
    result = metrics.surface_metrics(mesh, mesh, n_points=200_000, seed=0)
    assert 0.0 < result["chamfer"] < 0.0014
    assert result["fscore"]["0.005"] >= 0.9999
    assert result["normal_consistency"] > 0.99


def test_concentric_spheres_chamfer_matches_the_gap():
    r1, r2 = 1.0, 1.05
    pred, gt = sphere(r1), sphere(r2)
    diagonal = 2.0 * math.sqrt(3.0) * r2
    result = metrics.surface_metrics(pred, gt, n_points=100_000, seed=1)
    expected = (r2 - r1) / diagonal  # every point is |r2 - r1| from the other sphere
    assert result["chamfer"] == pytest.approx(expected, rel=0.03)
    assert result["accuracy"] == pytest.approx(expected, rel=0.03)
    assert result["completeness"] == pytest.approx(expected, rel=0.03)
    assert result["gt_bbox_diagonal"] == pytest.approx(diagonal, rel=1e-3)
    # the gap (0.0138 of the diagonal) is far beyond both thresholds
    assert result["fscore"] == {"0.005": 0.0, "0.0025": 0.0}
    assert result["tau_units"] == "gt_bbox_diagonal"

    raw = metrics.surface_metrics(pred, gt, n_points=100_000, seed=1, normalize=None, taus=(0.1,))
    assert raw["chamfer"] == pytest.approx(r2 - r1, rel=0.03)
    assert raw["tau_units"] == "gt_units"
    assert raw["fscore"] == {"0.1": 1.0}


def test_fscore_is_one_when_the_gap_is_well_below_tau():
    pred, gt = sphere(1.0), sphere(1.001)  # gap 0.0003 of the diagonal
    result = metrics.surface_metrics(pred, gt, n_points=200_000, seed=2, taus=(0.005,))
    assert result["precision"]["0.005"] >= 0.9999
    assert result["recall"]["0.005"] >= 0.9999
    assert result["fscore"]["0.005"] >= 0.9999


def test_normal_consistency_ignores_orientation_and_sees_perpendicular_planes():
    mesh = sphere(1.0, 4)
    flipped = mesh.copy()
    flipped.invert()
    assert np.allclose(flipped.face_normals, -mesh.face_normals)
    same = metrics.surface_metrics(mesh, mesh, n_points=30_000)["normal_consistency"]
    flip = metrics.surface_metrics(flipped, mesh, n_points=30_000)["normal_consistency"]
    assert same > 0.99 and flip > 0.99

    # two unit squares crossing at right angles: matched normals are perpendicular
    square = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    upright = square.copy()
    upright.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
    cross = metrics.surface_metrics(upright, square, n_points=20_000, normalize=None)
    assert cross["normal_consistency"] < 0.05


def test_visibility_filter_leaves_hidden_ground_truth_out_of_recall():
    outer = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    inner = trimesh.creation.icosphere(subdivisions=3, radius=0.2)  # a part no camera can see
    gt = trimesh.util.concatenate([outer, inner])
    eyes = 3.0 * np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    plain = metrics.surface_metrics(outer, gt, n_points=20_000, taus=(0.02,))  # above the sampling floor
    caster = MeshRayCaster(gt)
    seen = metrics.surface_metrics(outer, gt, n_points=20_000, taus=(0.02,),
                                   visible=lambda p: caster.seen_from(p, eyes))
    hidden = inner.area / gt.area
    assert plain["recall"]["0.02"] == pytest.approx(1 - hidden, abs=0.01)
    assert seen["recall"]["0.02"] == 1.0 and seen["precision"] == plain["precision"]
    assert seen["gt_seen_fraction"] == pytest.approx(1 - hidden, abs=0.01)
    with pytest.raises(InputError, match="seen"):
        metrics.surface_metrics(outer, gt, n_points=1000, visible=lambda p: caster.seen_from(p, np.zeros((0, 3))))


def test_tau_keys_and_bad_input():
    assert metrics.tau_key(0.005) == "0.005" and metrics.tau_key(0.0025) == "0.0025"
    assert metrics.tau_key(1e-2) == "0.01"
    degenerate = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(InputError, match="prediction mesh has no surface area"):
        metrics.surface_metrics(degenerate, sphere(), n_points=100)
    with pytest.raises(ValueError):
        metrics.surface_metrics(sphere(), sphere(), n_points=100, normalize="unit_sphere")


# ---------------------------------------------------------------------------------------------- occupancy


@pytest.mark.parametrize("method", ["winding", "rays"])
def test_occupancy_of_sphere_and_box(method):
    points = random_points()
    ball = sphere(1.0, 4)
    radius = np.linalg.norm(points, axis=1)
    clear = np.abs(radius - 1.0) > 0.01  # the icosphere's facets sit up to 0.0012 inside the sphere
    inside = occ.occupancy(ball, points, method=method)
    np.testing.assert_array_equal(inside[clear], radius[clear] < 1.0)

    box = trimesh.creation.box((1.0, 2.0, 0.8))
    half = np.array([0.5, 1.0, 0.4])
    inside = occ.occupancy(box, points, method=method)
    np.testing.assert_array_equal(inside, np.all(np.abs(points) < half, axis=1))


def test_winding_number_is_exact_and_orientation_signed():
    ball = sphere(1.0, 3)
    points = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, -5.0]])
    np.testing.assert_allclose(occ.winding_number(ball, points), [1, 1, 0, 0], atol=1e-9)
    ball.invert()
    np.testing.assert_allclose(occ.winding_number(ball, points), [-1, -1, 0, 0], atol=1e-9)
    # inside-out meshes still have their inside
    assert occ.occupancy(ball, points).tolist() == [True, True, False, False]


def test_fast_paths_agree_with_the_exact_winding_number():
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25)
    bounds = np.array([[-1.0, -1.0, -0.4], [1.0, 1.0, 0.4]])
    n = 20
    centres = occ.grid_centres(bounds, n)
    points = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, 3)
    exact = np.abs(occ.winding_number(mesh, points)) >= 0.5
    rays = np.abs(occ.ray_winding_number(mesh, points)) >= 0.5
    grid = occ.grid_occupancy(mesh, bounds, n)
    assert grid.shape == (n, n, n)
    assert 0.05 < exact.mean() < 0.5
    np.testing.assert_array_equal(rays, exact)
    np.testing.assert_array_equal(grid.ravel(), exact)


def test_open_mesh_warns_and_degrades_gracefully():
    mesh = open_sphere()
    assert not occ.is_watertight(mesh)
    points = np.array([[0.0, 0.0, 0.0], [0.2, 0.1, -0.3], [1.5, 0.0, 0.0]])
    with pytest.warns(UserWarning, match="not watertight"):
        inside = occ.occupancy(mesh, points, method="winding")
    assert inside.tolist() == [True, True, False]
    with pytest.warns(UserWarning, match="not watertight"):
        inside = occ.occupancy(mesh, points, method="rays")
    assert inside.tolist() == [True, True, False]
    with pytest.warns(UserWarning, match="prediction mesh is not watertight"):
        iou = metrics.volume_iou(mesh, sphere(1.0, 3), resolution=24)
    assert iou > 0.97


def test_seam_split_closed_mesh_counts_as_watertight():
    mesh = sphere(1.0, 2)
    split = trimesh.Trimesh(mesh.vertices[mesh.faces].reshape(-1, 3),
                            np.arange(3 * len(mesh.faces)).reshape(-1, 3), process=False)
    assert not split.is_watertight
    assert occ.is_watertight(split)


# ---------------------------------------------------------------------------------------------- IoU


def test_iou_of_concentric_spheres_matches_the_volume_ratio():
    r1, r2 = 0.6, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # closed meshes: no warning
        iou = metrics.volume_iou(sphere(r1), sphere(r2), resolution=128)
    assert iou == pytest.approx((r1 / r2) ** 3, rel=0.01)


def test_iou_of_sphere_in_box_matches_the_exact_volumes():
    ball = sphere(1.0, 4)
    box = trimesh.creation.box((2.0, 2.0, 2.0))
    iou = metrics.volume_iou(ball, box, resolution=64)
    assert iou == pytest.approx(ball.volume / box.volume, rel=0.01)
    assert metrics.volume_iou(box, box, resolution=16) == 1.0
    far = box.copy()
    far.apply_translation([5.0, 0.0, 0.0])
    assert metrics.volume_iou(box, far, resolution=16) == 0.0


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluate_from_files_gives_the_json_of_the_protocol(tmp_path):
    pred_path, gt_path = tmp_path / "pred.ply", tmp_path / "gt.ply"
    sphere(0.98, 3).export(pred_path)
    open_sphere().export(gt_path)
    with pytest.warns(UserWarning, match="ground-truth mesh is not watertight"):
        result = metrics.evaluate(pred_path, gt_path, n_points=20_000, iou_resolution=16)
    for key in ("chamfer", "accuracy", "completeness", "normal_consistency", "fscore", "precision",
                "recall", "tau_units", "iou", "points", "watertight"):
        assert key in result
    assert set(result["fscore"]) == {"0.005", "0.0025"}
    assert result["points"] == 20_000
    assert result["watertight"] == {"pred": True, "gt": False}
    json.loads(json.dumps(result))  # serialisable as is

    table = metrics.format_table(result)
    for word in ("chamfer", "fscore@0.005", "fscore@0.0025", "iou", "normal_consistency", "not watertight"):
        assert word in table
    lines = table.splitlines()
    assert len({line.index(line.split()[1]) + len(line.split()[1]) for line in lines}) == 1  # aligned

    without_iou = metrics.evaluate(sphere(1.0, 3), sphere(1.0, 3), n_points=5_000)
    assert "iou" not in without_iou and "watertight" not in without_iou
    with pytest.raises(InputError, match="no such file"):
        metrics.evaluate(tmp_path / "missing.ply", gt_path)


# ------------------------------------------------------------------ the single-view protocol's voxels
UNIT_BOX = np.array([[-0.5] * 3, [0.5] * 3])


def _overlapping_cells(lo: np.ndarray, hi: np.ndarray, n: int = 32) -> np.ndarray:
    """Cells of the n^3 grid over UNIT_BOX whose interiors overlap the box [lo, hi]."""
    edges = np.linspace(-0.5, 0.5, n + 1)
    axes = [(edges[1:] > lo[k]) & (edges[:-1] < hi[k]) for k in range(3)]
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]


def test_solid_voxels_of_a_box_are_the_cells_it_overlaps():
    extents = np.array([0.61, 0.33, 0.47])
    box = trimesh.creation.box(extents)
    box.apply_translation([0.013, -0.05, 0.021])
    expected = _overlapping_cells(box.bounds[0], box.bounds[1])
    np.testing.assert_array_equal(occ.solid_voxels(box, UNIT_BOX, 32), expected)


def test_solid_voxels_keep_parts_thinner_than_a_cell():
    plate = trimesh.creation.box((0.6, 0.01, 0.6))  # a third of a 1/32 cell thick
    plate.apply_translation([0.0, -0.5 + 22.25 / 32, 0.0])  # inside layer 22, below its centres
    voxels = occ.solid_voxels(plate, UNIT_BOX, 32)
    assert not occ.grid_occupancy(plate, UNIT_BOX, 32).any()  # no cell centre is inside
    np.testing.assert_array_equal(voxels, _overlapping_cells(plate.bounds[0], plate.bounds[1]))
    assert voxels.any(axis=(0, 2)).sum() == 1


def test_solid_voxels_fill_closed_surfaces_only():
    ball = trimesh.creation.icosphere(4, radius=0.3)
    solid = occ.solid_voxels(ball, UNIT_BOX, 32)
    centres = occ.grid_occupancy(ball, UNIT_BOX, 32)
    assert not (centres & ~solid).any()  # contains the centre occupancy
    assert solid[16, 16, 16] and solid.sum() < centres.sum() + 4 * np.pi * 0.3 ** 2 * 32 ** 2 * 2
    sheet = trimesh.Trimesh([[-0.3, 0.01, -0.3], [0.3, 0.01, -0.3], [0.3, 0.01, 0.3], [-0.3, 0.01, 0.3]],
                            [[0, 1, 2], [0, 2, 3]])
    voxels = occ.solid_voxels(sheet, UNIT_BOX, 32)  # open: its cells and nothing enclosed
    np.testing.assert_array_equal(voxels, _overlapping_cells(sheet.bounds[0], sheet.bounds[1]))
    assert not occ.solid_voxels(trimesh.Trimesh(), UNIT_BOX, 32).any()
