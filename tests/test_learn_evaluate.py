"""The evaluation protocol of single-view networks on hand-made data: per-category aggregation, the
mean-shape baseline, and the (object, view) bookkeeping of scoring with a fake network."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from zerolevel.learn.evaluate import (category_means, fit_mean_shape, format_table, mean_shape_voxels,
                                      occupancy_frequency, score_predictions, view_indices, voxel_ious)
from zerolevel.geometry.occupancy import grid_centres, solid_voxels

N = 32  # voxels per axis
BOUNDS = np.array([[-0.5] * 3, [0.5] * 3])


def box_voxels(half: float) -> np.ndarray:
    """(N, N, N) occupancy of the cube [-half, half]^3 at the dataset's cell centres."""
    x = grid_centres(np.array([[-0.5] * 3, [0.5] * 3]), N)[0]
    inside = np.abs(x) <= half
    return inside[:, None, None] & inside[None, :, None] & inside[None, None, :]


def test_category_means_average_pairs_then_categories():
    categories = ["b", "a", "a"]
    values = np.array([[1.0, 1.0], [0.2, 0.4], [0.6, np.nan]])  # 2 views per object; a NaN is left out
    result = category_means(categories, values)
    assert list(result["per_category"]) == ["a", "b"]
    assert result["per_category"]["a"] == pytest.approx(0.4)  # (0.2 + 0.4 + 0.6) / 3
    assert result["per_category"]["b"] == pytest.approx(1.0)
    assert result["mean"] == pytest.approx(0.7)  # each category once, not each object (0.6)
    assert result["objects"] == {"a": 2, "b": 1}
    assert category_means(["a"], np.array([np.nan]))["mean"] is None


def test_mean_shape_is_the_majority_vote():
    voxels = np.zeros((3, 2, 2, 2), bool)
    voxels[:, 0, 0, 0] = True                 # 3 of 3
    voxels[:2, 1, 0, 0] = True                # 2 of 3
    voxels[0, 0, 1, 0] = True                 # 1 of 3
    expected = np.zeros((2, 2, 2), bool)
    expected[0, 0, 0] = expected[1, 0, 0] = True
    np.testing.assert_array_equal(mean_shape_voxels(voxels), expected)
    np.testing.assert_allclose(occupancy_frequency(voxels, chunk=2)[:, 0, 0], [1, 2 / 3])
    two = voxels[:2].copy()
    two[1, 1, 0, 0] = False                   # a 1-1 tie is not a majority
    assert not mean_shape_voxels(two)[1, 0, 0]


def test_fit_mean_shape_takes_the_best_threshold():
    rng = np.random.default_rng(0)
    voxels = rng.random((7, 4, 4, 4)) < np.linspace(0.05, 0.95, 64).reshape(4, 4, 4)
    categories = ["x"] * 4 + ["y"] * 3
    fitted = fit_mean_shape(voxels, categories=categories)
    scores = {t: category_means(categories, voxel_ious(mean_shape_voxels(voxels, t), voxels))["mean"]
              for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
    assert fitted.train_iou == pytest.approx(max(scores.values()))
    assert scores[fitted.threshold] == pytest.approx(fitted.train_iou)
    np.testing.assert_array_equal(fitted.voxels, mean_shape_voxels(voxels, fitted.threshold))


def test_voxel_ious_and_view_indices():
    small, big = box_voxels(0.125), box_voxels(0.25)  # 8^3 and 16^3 cells
    np.testing.assert_allclose(voxel_ious(small, np.stack([small, big, np.zeros_like(big)]), chunk=2),
                               [1.0, 1 / 8, 0.0])
    assert np.isnan(voxel_ious(np.zeros_like(big), np.zeros((1,) + big.shape, bool))[0])
    np.testing.assert_array_equal(view_indices(24), np.arange(24))
    np.testing.assert_array_equal(view_indices(24, 4), [0, 6, 12, 18])
    np.testing.assert_array_equal(view_indices(4, 10), np.arange(4))


# ---------------------------------------------------------------------------------------- fake network
class BoxNet(nn.Module):
    """A fake network: the cube of half-size (k + 1/2) / 32, k the input's alpha (0-255 byte) at pixel (0, 0)
    (faces through cell centres, off the lattice planes, so that every cell is clearly in or out)."""

    def __init__(self):
        super().__init__()
        box = trimesh.creation.box(extents=(2, 2, 2))
        self.unit = torch.as_tensor(box.vertices, dtype=torch.float32)
        self.faces = torch.as_tensor(box.faces)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = (torch.round(images[:, 3, 0, 0] * 255) + 0.5) / N
        return half[:, None, None] * self.unit

    def predict_meshes(self, images: torch.Tensor, cameras=None) -> list:
        faces = self.faces.numpy()
        return [(vertices, faces) for vertices in self(images).double().numpy()]


@dataclass
class BoxSplit:
    images: np.ndarray
    voxels: np.ndarray
    folder: Path

    def __len__(self) -> int:
        return len(self.images)

    def mesh_path(self, index: int) -> Path:
        return self.folder / f"{index}.ply"


def test_scoring_keeps_objects_and_views_apart(tmp_path):
    # object i is the cube of half-size (gt[i] + 1/2) / 32; view v of it makes the fake network predict
    # (pred[i][v] + 1/2) / 32
    gt = [8, 4]
    pred = [[8, 4, 12], [4, 4, 8]]
    images = np.zeros((2, 3, 16, 16, 4), np.uint8)
    images[..., 3] = np.array(pred, np.uint8)[:, :, None, None]
    boxes = [trimesh.creation.box(extents=(2 * (k + 0.5) / N,) * 3) for k in gt]
    voxels = np.stack([solid_voxels(box, BOUNDS, N) for box in boxes])  # as the dataset makes them
    for i, box in enumerate(boxes):
        box.export(tmp_path / f"{i}.ply")
    split = BoxSplit(images, voxels, tmp_path)
    scores = score_predictions(BoxNet(), split, np.array([0, 1, 2]), surface_views=2, points=4000,
                               batch_size=4, progress=False)
    cubes = lambda a, b: ((min(a, b) + 1) / (max(a, b) + 1)) ** 3  # noqa: E731 - 2k + 2 cells per axis
    expected = np.array([[cubes(p, g) for p in row] for row, g in zip(pred, gt)])
    np.testing.assert_allclose(scores["iou"], expected, atol=1e-12)
    assert scores["chamfer"].shape == (2, 2) and scores["fscore@0.005"].shape == (2, 2)
    # a prediction equal to the ground truth has a far smaller Chamfer distance than a wrong one
    assert scores["chamfer"][0, 0] < 0.2 * scores["chamfer"][0, 1]
    assert scores["chamfer"][1, 0] < 0.2 * scores["chamfer"][0, 1]
    means = category_means(["p", "q"], scores["iou"])["per_category"]
    assert means["p"] == pytest.approx(expected[0].mean()) and means["q"] == pytest.approx(expected[1].mean())


def test_format_table_rows():
    result = {"split": "test", "dataset": "set", "run": "run", "objects": 3, "views": [0, 1], "voxels": 32,
              "checkpoint": {"encoder": "baseline", "iteration": 5}, "seconds": 1.0,
              "iou": category_means(["a", "a", "b"], np.array([0.5, 0.7, 0.9])),
              "mean_shape": {"threshold": 0.4, "train_iou": 0.3,
                             "iou": category_means(["a", "a", "b"], np.array([0.1, 0.3, np.nan]))},
              "surface": None}
    lines = format_table(result).splitlines()
    assert lines[2].split() == ["a", "2", "0.6000", "0.2000"]
    assert lines[3].split() == ["b", "1", "0.9000", "-"]
    assert lines[4].split() == ["mean", "3", "0.7500", "0.2000"]
    assert "> 0.4" in lines[5]
