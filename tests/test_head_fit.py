"""The per-image fit baseline of the head evaluation (`learn.head_fit`): its start is the lattice's
field, and a fit of one photograph's mask and normal map moves the mean head towards the true head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zerolevel.geometry.tetgrid import TetGrid
from zerolevel.learn.dataset.heads import HeadDatasetSettings, load_head_split, write_head_dataset
from zerolevel.learn.head_fit import HEAD_FIT, fit_predictions, start_from_lattice
from zerolevel.learn.heads import SDFLattice
from zerolevel.learn.phorhum_eval import evaluate_heads, mean_figures, mean_head_predictions


def test_start_is_the_lattices_distance_in_working_units():
    """A sphere's distance on a lattice over part of the box: the start reads it inside the lattice's
    box (trilinear: exact to the curvature's second order) and grows with the distance beyond it."""
    axis = np.linspace(-0.4, 0.4, 33)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    lattice = SDFLattice((np.linalg.norm(points, axis=-1) - 0.25).astype(np.float32), np.full(3, -0.4), np.full(3, 0.4))
    radius = 0.6
    grid = TetGrid.regular(16)
    values = start_from_lattice(lattice, radius)(grid)
    world = grid.vertices.double() * radius
    inside = (world.abs() < 0.4).all(dim=1)
    expected = world.norm(dim=1) - 0.25
    assert torch.allclose(values[inside].double() * radius, expected[inside], atol=2e-3)
    outside = ~inside
    assert (values[outside].double() * radius >= expected[outside] - 2e-3).all()  # the box's value + distance


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("headfit") / "heads"
    write_head_dataset(root, 4, HeadDatasetSettings(views=1, resolution=64, supersample=1, surface_samples=2000,
                                                    near_samples=100, far_samples=50),
                       fractions=(0.5, 0.25, 0.25), seed=3, progress=False)
    return root


def test_fit_of_one_photograph_moves_the_mean_head_towards_the_truth(heads):
    test, train = load_head_split(heads, "test"), load_head_split(heads, "train")
    indices = [0]
    fitted = fit_predictions(test, indices, train, seconds=10.0, config=HEAD_FIT)
    fit = mean_figures(evaluate_heads(fitted, test, indices, samples=20_000))
    mean = mean_figures(evaluate_heads(mean_head_predictions(test, indices, train), test, indices, samples=20_000))
    assert fit["silhouette IoU"] > mean["silhouette IoU"] + 0.02
    assert fit["Chamfer face"] < mean["Chamfer face"]
    assert fit["albedo PSNR face"] == pytest.approx(mean["albedo PSNR face"])  # the same mean albedo
