"""SDF primitives: closed-form distances, and numpy and torch evaluating the same formulas alike."""

import numpy as np
import pytest
import torch

from zerolevel.geometry import primitives as P

POINTS = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, -3.0, 0.0], [1.0, 1.0, 1.0], [0.3, 0.2, -0.1]],
                  np.float32)

CASES = {
    "sphere": lambda p, a: P.sphere(p, 1.0),
    "box": lambda p, a: P.box(p, a(np.array([0.5, 1.0, 0.25], np.float32))),
    "rounded box": lambda p, a: P.box(p, a(np.array([0.5, 1.0, 0.25], np.float32)), 0.1),
    "capsule": lambda p, a: P.capsule(p, a(np.array([0, -1, 0], np.float32)), a(np.array([0, 1, 0], np.float32)), 0.5),
    "cylinder": lambda p, a: P.cylinder(p, 0.5, 1.0),
    "ellipsoid": lambda p, a: P.ellipsoid(p, a(np.array([1.0, 0.5, 0.75], np.float32)), above=-0.2),
    "torus": lambda p, a: P.torus(p, 1.0, 0.25),
    "prism": lambda p, a: P.prism(p, [(0, 0), (1, 0), (0, 1)], 0.5),
}


@pytest.mark.parametrize("name", CASES)
def test_numpy_and_torch_agree(name):
    in_numpy = CASES[name](POINTS, lambda x: x)
    in_torch = CASES[name](torch.from_numpy(POINTS), torch.from_numpy)
    assert isinstance(in_torch, torch.Tensor) and in_torch.dtype == torch.float32
    np.testing.assert_allclose(in_torch.numpy(), in_numpy, atol=1e-6)


def test_closed_forms():
    p = POINTS.astype(np.float64)
    np.testing.assert_allclose(P.sphere(p, 1.0), [-1, 1, 2, np.sqrt(3) - 1, np.sqrt(0.14) - 1])
    half = np.array([0.5, 1.0, 0.25])
    np.testing.assert_allclose(P.box(p, half)[:3], [-0.25, 1.5, 2.0])
    np.testing.assert_allclose(P.box(p, half)[3], np.linalg.norm([0.5, 0.0, 0.75]))
    np.testing.assert_allclose(P.box(p, half, 0.1)[:3], [-0.25, 1.5, 2.0])  # faces do not move
    a, b = np.array([0.0, -1, 0]), np.array([0.0, 1, 0])
    np.testing.assert_allclose(P.capsule(p, a, b, 0.5)[:3], [-0.5, 1.5, 1.5])
    np.testing.assert_allclose(P.cylinder(p, 0.5, 1.0)[:3], [-0.5, 1.5, 2.0])
    np.testing.assert_allclose(P.torus(p, 1.0, 0.25)[:2], [0.75, 0.75])
    # a ball is exact, away from the centre (where the bound k0 (k0 - 1) / k1 is 0)
    np.testing.assert_allclose(P.ellipsoid(p[1:], np.ones(3)), P.sphere(p[1:], 1.0), atol=1e-12)


def test_torch_gradients_flow_to_parameters():
    radius = torch.tensor(0.5, requires_grad=True)
    half = torch.tensor([0.5, 1.0, 0.25], requires_grad=True)
    points = torch.from_numpy(POINTS)
    (P.sphere(points, radius).sum() + P.box(points, half).sum()).backward()
    assert radius.grad == pytest.approx(-len(POINTS))
    assert torch.isfinite(half.grad).all() and half.grad.abs().sum() > 0
