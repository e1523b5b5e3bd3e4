"""Sphere tracing of a batch of SDF lattices (SDFDiff's renderer for networks): renders of sphere
lattices against the analytic sphere, each ray in its own lattice, the batch equal to each lattice
alone, the soft silhouette's minimum, and gradients against finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zerolevel.cameras import Cameras
from zerolevel.geometry.rays import ray_box_interval
from zerolevel.render.lattice_trace import Lattices, lattice_shading, render_lattices

BOUND = 0.55


def sphere_lattices(radii, n: int = 33, dtype=torch.float32) -> torch.Tensor:
    axis = torch.linspace(-BOUND, BOUND, n, dtype=dtype)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    return torch.stack([points.norm(dim=-1) - r for r in radii])


def analytic_sphere(origins: torch.Tensor, directions: torch.Tensor, radius: float):
    """(hit, t) of rays against a sphere at the origin."""
    b = (origins * directions).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - radius ** 2)
    return disc > 0, -b - disc.clamp_min(0).sqrt()


def test_the_lattice_is_read_trilinearly_and_grows_with_the_distance_outside_its_box():
    torch.manual_seed(0)
    values = torch.randn(3, 9, 9, 9, dtype=torch.float64)
    lattices = Lattices(values, BOUND)
    points = (torch.rand(3, 50, 3, dtype=torch.float64) * 2 - 1) * BOUND
    ids = torch.arange(3)[:, None].expand(3, 50)
    grid = (points / BOUND).flip(-1)[:, :, None, None]  # grid_sample's (z, y, x) order
    reference = F.grid_sample(values[:, None], grid, mode="bilinear", align_corners=True).reshape(3, 50)
    torch.testing.assert_close(lattices(points, ids), reference)
    outside = points[0, :1] * 0 + torch.tensor([[BOUND + 0.3, 0.1, -0.2]], dtype=torch.float64)
    on_box = outside.clone()
    on_box[0, 0] = BOUND
    torch.testing.assert_close(lattices(outside, ids[0, :1]), lattices(on_box, ids[0, :1]) + 0.3)


def test_ray_box_interval_enters_and_leaves_the_cube():
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.2, 0.1, 0.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far, meets = ray_box_interval(origins, directions, 1.0)
    assert meets.tolist() == [True, False, True]
    torch.testing.assert_close(near[[0, 2]], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([4.0, 0.8]))


def test_every_view_renders_its_own_sphere_as_the_analytic_one():
    """Three spheres of different radii, four views each, one march: masks agree with the analytic
    sphere but within one pixel ring of the silhouette, depths within 0.3% of the radius, normals
    within 0.01, the soft mask over 0.5 on hits and under it off them."""
    radii = [0.25, 0.32, 0.4]
    lattices = Lattices(sphere_lattices(radii, 65), BOUND)
    ring = Cameras.ring(n_views=4, width=48, height=48)
    cameras = Cameras.cat([ring] * 3)
    which = torch.arange(12) // 4
    out = render_lattices(lattices, cameras, which)
    origins, directions = cameras.image_rays()
    for k, radius in enumerate(radii):
        o, d = origins[which == k].double(), directions[which == k].double()
        hit, t = analytic_sphere(o, d, radius)
        got = out["mask"][which == k]
        assert (got != hit).float().mean() < 0.01
        both = got & hit
        assert (out["distance"][which == k][both] - t[both]).abs().max() < 0.003 * radius / 0.25
        truth = (o + t[..., None] * d)[both] / radius
        assert (out["normal"][which == k][both].double() - truth).norm(dim=-1).max() < 0.01
    assert out["soft_mask"][out["mask"]].min() >= 0.5 and out["soft_mask"][~out["mask"]].max() < 0.5


def test_a_batch_renders_as_each_lattice_alone():
    torch.manual_seed(1)
    values = sphere_lattices([0.3, 0.35], 33) + 0.02 * torch.randn(2, 33, 33, 33)
    cameras = Cameras.ring(n_views=4, width=24, height=24)
    together = render_lattices(Lattices(values, BOUND), cameras, torch.tensor([0, 1, 1, 0]))
    for view, k in enumerate([0, 1, 1, 0]):
        alone = render_lattices(Lattices(values[k:k + 1], BOUND), cameras[view], torch.tensor([0]))
        for key in ("mask", "distance", "normal", "min_sdf"):
            torch.testing.assert_close(together[key][view], alone[key][0])


def test_the_soft_silhouette_is_the_least_value_along_a_missing_ray():
    """Within a cell of the true minimum over the ray's stretch in the box where the soft mask still
    varies (the minimum within 0.1 of the surface), where the march's steps are short."""
    values = sphere_lattices([0.3], 33, torch.float64)
    camera = Cameras.ring(n_views=1, width=32, height=32).to(dtype=torch.float64)
    out = render_lattices(Lattices(values, BOUND), camera, torch.tensor([0]))
    o, d = (x[0].reshape(-1, 3) for x in camera.image_rays())
    near, far, meets = ray_box_interval(o, d, BOUND)
    t = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 4001, dtype=torch.float64)
    truth = (o[:, None] + t[..., None] * d[:, None]).norm(dim=-1).min(dim=1).values - 0.3
    miss = ~out["mask"][0].reshape(-1) & meets
    got = out["min_sdf"][0].reshape(-1)
    near_surface = miss & (truth < 0.1)
    assert near_surface.sum() > 20
    assert (got[near_surface] - truth[near_surface]).abs().max() < 2 * BOUND / 32
    assert (got[miss] >= truth[miss] - 1e-3).all()  # a sample's value: never below the true minimum


@pytest.mark.parametrize("key", ["distance", "normal"])
def test_gradients_with_respect_to_the_values_match_finite_differences(key):
    torch.manual_seed(2)
    base = sphere_lattices([0.3], 17, torch.float64) + 0.01 * torch.randn(1, 17, 17, 17, dtype=torch.float64)
    camera = Cameras.ring(n_views=1, width=12, height=12).to(dtype=torch.float64)
    weights = torch.randn(12, 12, 3, dtype=torch.float64)

    def loss(values):  # hits converged tightly: the implicit derivative is that of the exact crossing
        out = render_lattices(Lattices(values, BOUND), camera, torch.tensor([0]), epsilon=1e-11,
                              max_steps=400)[key][0]
        return (out * (weights if out.dim() == 3 else weights[..., 0])).sum()

    values = base.clone().requires_grad_(True)
    loss(values).backward()
    gradient = values.grad.reshape(-1)
    checked = 0
    for index in gradient.abs().topk(6).indices:
        step = torch.zeros_like(base).reshape(-1)
        step[index] = 1e-6
        step = step.reshape(base.shape)
        with torch.no_grad():
            numeric = (loss(base + step) - loss(base - step)) / 2e-6
        assert abs(float(numeric) - float(gradient[index])) < 0.02 * abs(float(numeric)) + 1e-6
        checked += 1
    assert checked == 6


def test_the_soft_silhouette_gradient_of_missing_rays_is_that_of_their_true_minimum():
    """On the pixels the surface misses, the gradient of sum w sigmoid(-k f_min) w.r.t. the values
    matches finite differences of the same sum over each ray's minimum found by dense sampling
    (the envelope theorem at the refined argmin)."""
    torch.manual_seed(3)
    base = sphere_lattices([0.3], 17, torch.float64) + 0.01 * torch.randn(1, 17, 17, 17, dtype=torch.float64)
    camera = Cameras.ring(n_views=1, width=12, height=12).to(dtype=torch.float64)
    k = 20.0
    o, d = (x[0].reshape(-1, 3) for x in camera.image_rays())
    near, far, _ = ray_box_interval(o, d, BOUND)
    t = near[:, None] + (far - near).clamp_min(0)[:, None] * torch.linspace(0, 1, 5001, dtype=torch.float64)
    points = o[:, None] + t[..., None] * d[:, None]
    miss = ~render_lattices(Lattices(base, BOUND), camera, torch.tensor([0]))["mask"][0].reshape(-1)
    weights = torch.rand(len(o), dtype=torch.float64) * miss

    def dense(values):
        f = Lattices(values, BOUND)(points, torch.zeros(points.shape[:-1], dtype=torch.long)).min(dim=1).values
        return (weights * torch.sigmoid(-k * f)).sum()

    values = base.clone().requires_grad_(True)
    soft = render_lattices(Lattices(values, BOUND), camera, torch.tensor([0]), soft_k=k)["soft_mask"][0]
    (soft.reshape(-1) * weights).sum().backward()
    gradient = values.grad.reshape(-1)
    for index in gradient.abs().topk(6).indices:
        step = torch.zeros_like(base).reshape(-1)
        step[index] = 1e-6
        with torch.no_grad():
            numeric = (dense(base + step.reshape(base.shape)) - dense(base - step.reshape(base.shape))) / 2e-6
        assert abs(float(numeric) - float(gradient[index])) < 0.05 * abs(float(numeric)) + 1e-6


def test_lattice_shading_is_the_datasets_lambertian_times_the_colour():
    normal = torch.tensor([[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]])  # (1 view, 2 pixels, 3)
    mask = torch.tensor([[True, True]])
    light = torch.tensor([[0.0, 0.0, -1.0]])
    shaded = lattice_shading(normal, mask, light, torch.tensor([0.7]), torch.tensor([0.2]),
                             torch.tensor([[1.0, 0.5, 0.25]]))
    torch.testing.assert_close(shaded, torch.tensor([[[0.9, 0.45, 0.225], [0.2, 0.1, 0.05]]]))
    assert np.all(lattice_shading(normal, ~mask, light, torch.tensor([0.7]), torch.tensor([0.2]),
                                  torch.ones(1, 3)).numpy() == 0)
