"""The ray-sphere interval against closed forms, in torch and numpy alike."""

import numpy as np
import pytest
import torch

from zerolevel.geometry.rays import ray_sphere_interval


def test_a_ray_through_the_centre_enters_and_leaves_at_the_radius():
    near, far, hit = ray_sphere_interval(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), 0.5)
    assert near.tolist() == [2.5] and far.tolist() == [3.5] and hit.tolist() == [True]


def test_misses_starts_inside_and_numpy_agree():
    origins = np.array([[0.0, 2.0, -3.0], [0.0, 0.0, 0.2], [0.0, 0.0, 3.0]])
    directions = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = ray_sphere_interval(origins, directions)
    assert hit.tolist() == [False, True, False]  # above it; from inside; pointing away behind it
    assert near[1] == 0.0 and far[1] == pytest.approx(0.8)  # from inside: starts at the origin
    t_near, t_far, t_hit = ray_sphere_interval(torch.as_tensor(origins), torch.as_tensor(directions))
    np.testing.assert_allclose(t_near.numpy(), near)
    np.testing.assert_allclose(t_far.numpy(), far)
    assert t_hit.tolist() == hit.tolist()
