"""The shared loss terms against closed forms, and their NaN-proofing."""

import math

import pytest
import torch
import trimesh

from zerolevel import losses as L


def test_masked_mean_ignores_garbage_outside_the_weight():
    values = torch.tensor([1.0, 3.0, float("nan"), float("inf")], requires_grad=True)
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0])
    out = L.masked_mean(values, weight)
    assert out.item() == 2.0
    out.backward()
    assert torch.equal(values.grad, torch.tensor([0.5, 0.5, 0.0, 0.0]))
    empty = L.masked_mean(values, torch.zeros(4))
    assert empty.item() == 0.0  # no pixel: exactly 0, not 0/0


def test_norm_terms_have_finite_gradients_at_zero_vectors():
    # eikonal and area rely on torch's norm backward being 0 (not 0 / 0) at a zero vector
    gradient = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    L.eikonal_loss(gradient).backward()
    assert torch.isfinite(gradient.grad).all() and torch.equal(gradient.grad[1], torch.zeros(3))
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], requires_grad=True)
    area = L.mesh_area(vertices, torch.tensor([[0, 1, 2]]))  # collinear: a zero-area triangle
    area.backward()
    assert area.item() == 0.0 and torch.isfinite(vertices.grad).all()


def test_normal_terms():
    up, side = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    rendered = torch.stack([up, up, side, torch.full((3,), float("nan"))])
    target = torch.stack([up, side, side, up])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert L.normal_l1(rendered, target, weight).item() == pytest.approx(2.0 / 3)  # |0| + |(0,-1,1)|_1 + 0
    assert L.normal_l2(rendered, target, weight).item() == pytest.approx(2.0 / 3)  # |(0,-1,1)|^2 = 2
    grey = torch.tensor([0.2, 0.7, float("nan")])
    assert L.shading_l1(grey, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1.0, 1.0, 0.0])).item() == \
        pytest.approx(0.25)


def test_mask_terms():
    half = torch.full((4,), 0.5)
    assert L.mask_bce(half, torch.ones(4)).item() == pytest.approx(math.log(2))
    saturated = L.mask_bce(torch.zeros(2), torch.ones(2))
    assert saturated.item() == pytest.approx(-math.log(L.BCE_CLAMP), rel=1e-5)  # clamped, not infinite
    opacity = torch.tensor([float("nan"), 0.5], requires_grad=True)
    value = L.mask_bce(opacity, torch.tensor([1.0, 1.0]))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(opacity.grad).all()
    weighted = L.mask_bce(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx(2 * math.log(2))  # mean of (1 + 3) log 2 over 2 pixels
    assert L.mask_l2(torch.tensor([1.0, 0.25]), torch.tensor([0.0, 0.75])).item() == pytest.approx(0.625)


def test_soft_iou_of_overlapping_squares():
    a = torch.zeros(1, 10, 10)
    b = torch.zeros(1, 10, 10)
    a[0, :5, :] = 1  # 50 pixels
    b[0, 2:7, :] = 1  # 50 pixels, 30 shared
    assert L.soft_iou(a, b, eps=0).item() == pytest.approx(30 / 70)
    assert L.silhouette_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_eikonal_terms():
    directions = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert L.eikonal_loss(directions).item() == pytest.approx(0.0, abs=1e-12)  # a true SDF's gradients
    assert L.eikonal_loss(2 * directions).item() == pytest.approx(1.0)
    flat = torch.zeros(4, 3, requires_grad=True)  # a flat region: cost 1, finite gradient
    value = L.eikonal_loss(flat)
    value.backward()
    assert value.item() == 1.0 and torch.isfinite(flat.grad).all()
    assert L.eikonal_loss(torch.zeros(0, 3)).item() == 0.0
    assert L.eikonal_residual_loss(torch.tensor([0.5, -0.5])).item() == 0.25
    assert L.eikonal_residual_loss(torch.zeros(0)).item() == 0.0


def test_shrink_and_expand():
    assert L.shrink_loss(torch.tensor([-0.3, 0.2]), margin=0.1).item() == pytest.approx(0.2)  # (0.4 + 0) / 2
    assert L.expand_loss(torch.tensor([0.3, -0.5]), margin=0.1).item() == pytest.approx(0.2)  # (0.4 + 0) / 2
    assert L.shrink_loss(torch.zeros(0), 0.1).item() == 0.0 and L.expand_loss(torch.zeros(0), 0.1).item() == 0.0


def test_mesh_area_and_its_mean_curvature_gradient():
    box = trimesh.creation.box((1.0, 2.0, 3.0))
    vertices = torch.tensor(box.vertices, dtype=torch.float64)
    faces = torch.tensor(box.faces)
    assert L.mesh_area(vertices, faces).item() == pytest.approx(2 * (2 + 3 + 6))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = torch.tensor(sphere.vertices, dtype=torch.float64, requires_grad=True)
    area = L.mesh_area(v, torch.tensor(sphere.faces))
    area.backward()
    # on a sphere the area gradient is the mean-curvature normal: along the outward radius, and
    # d(area)/d(scale) = 2 area (area ~ r^2)
    radial = (v.grad * v.detach()).sum(1)
    tangential = v.grad - radial[:, None] * v.detach()
    assert (radial > 0).all() and tangential.norm(dim=1).max() < 1e-2 * radial.min()
    assert radial.sum().item() == pytest.approx(2 * area.item(), rel=1e-9)
    degenerate = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]], requires_grad=True)
    value = L.mesh_area(degenerate, torch.tensor([[0, 1, 2]]))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(degenerate.grad).all()
