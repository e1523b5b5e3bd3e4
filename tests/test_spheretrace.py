"""Sphere tracing and the dense SDF grid: forward against the Embree ground truth (analytic sphere,
a 64^3 grid of Spot), gradients against central finite differences (float64) and against the
analytic implicit derivative, back hits, batching, chunking, pixel subsets and the active set."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage

from zerolevel.cameras import Cameras
from zerolevel.data import example_mesh_path
from zerolevel.fields.analytic import SphereSDF
from zerolevel.fields.grid import DenseGridSDF
from zerolevel.geometry.extract import sample_grid
from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
from zerolevel.render.raycast import DirectionalLight, render_mesh
from zerolevel.render.shading import lambertian
from zerolevel.geometry.rays import ray_sphere_interval
from zerolevel.render.spheretrace import march, render_sdf, sphere_trace

CENTER = (0.1, -0.05, 0.02)
RADIUS = 0.5
# float64 checks: converge fully, refine every ray's minimum, and no clamping of |grad f . d| at
# grazing hits (the default guard deliberately caps those derivatives; see
# test_guard_caps_grazing_derivatives)
EXACT = dict(epsilon=1e-10, max_steps=400, soft_steps=40, soft_band=math.inf, guard=1e-12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared, loaded 2-core box two spinning threads are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cameras(n: int, size: int, dtype=torch.float32, fov: float = 30.0) -> Cameras:
    return Cameras.sphere(n, distance=3.0, fov_deg=fov, width=size, height=size).to(dtype=dtype)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _eroded(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_erosion(m) for m in mask])


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


class CountingField(torch.nn.Module):
    """Wraps a field and records how many points each call evaluates."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.calls: list[int] = []

    def forward(self, points):
        self.calls.append(points[..., 0].numel())
        return self.field(points)


# ------------------------------------------------------------------------------ the grid field


def test_grid_reproduces_linear_fields_exactly():
    """Trilinear interpolation is exact for affine fields: checks node layout, axis order and
    align_corners on an anisotropic box and grid."""
    bounds = ((-1.0, -0.5, -2.0), (1.0, 1.5, 0.5))
    coeff = torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64)

    def affine(p):
        return p @ coeff.to(p.dtype) + 0.1

    grid = DenseGridSDF.from_function(affine, (5, 7, 9), bounds, dtype=torch.float64)
    assert grid.resolution == (5, 7, 9)
    g = torch.Generator().manual_seed(0)
    lo, hi = grid.lo, grid.hi
    p = lo + (hi - lo) * torch.rand(1000, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(grid(p), affine(p), atol=1e-12, rtol=0)
    inner = ((p - lo > grid.voxel_size) & (hi - p > grid.voxel_size)).all(-1)  # FD stays in the box
    torch.testing.assert_close(grid.gradient(p[inner]), coeff.expand(int(inner.sum()), 3),
                               atol=1e-10, rtol=0)
    # the same node layout as the mesh extractor's sample grid
    values = sample_grid(affine, 9, bounds)
    grid9 = DenseGridSDF.from_function(affine, 9, bounds, dtype=torch.float64)
    np.testing.assert_allclose(grid9.values.detach().numpy(), values, atol=1e-6)


def test_grid_outside_the_box_adds_the_distance_to_it():
    sphere = SphereSDF(radius=0.5)
    grid = DenseGridSDF.from_function(sphere, 33)
    p = torch.tensor([[2.0, 0.0, 0.0], [1.5, 1.5, 0.0], [0.0, 0.0, -3.0]])
    q = p.clamp(-1.0, 1.0)
    expected = grid(q) + (p - q).norm(dim=-1)
    torch.testing.assert_close(grid(p), expected)
    # the field keeps growing away from the box, with a gradient pointing out of it
    g = grid.gradient(p)
    assert (g * p).sum(-1).gt(0).all()


def test_grid_gradient_and_upsample():
    sphere = SphereSDF(CENTER, RADIUS)
    coarse = DenseGridSDF.from_function(sphere, 17)
    fine = coarse.upsample(33)
    assert fine.resolution == (33, 33, 33)
    # every coarse node is a fine node: values carried over exactly
    torch.testing.assert_close(fine.values.detach()[::2, ::2, ::2], coarse.values.detach())
    assert fine.values.requires_grad and fine.values is not coarse.values
    # central differences one voxel apart approximate the unit normal near the surface
    g = torch.Generator().manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    c = torch.tensor(CENTER)
    p = c + RADIUS * dirs
    with torch.no_grad():
        grad = DenseGridSDF.from_function(sphere, 65).gradient(p)
    assert _angles_deg(torch.nn.functional.normalize(grad, dim=-1).numpy(), dirs.numpy()).max() < 2.0


# ------------------------------------------------------------------------------ forward vs ground truth


def test_sphere_matches_the_ray_caster():
    cams = _cameras(3, 64)
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    mesh.apply_translation(CENTER)
    light = [DirectionalLight((0.3, 1.0, -0.5), 0.8), DirectionalLight((-1.0, 0.0, 0.2), 0.4)]
    gt = render_mesh(mesh, cams, lights=light)
    with torch.no_grad():
        out = render_sdf(SphereSDF(CENTER, RADIUS), cams, lights=light)
    mask, gt_mask = out["mask"].numpy(), gt["mask"] > 0.5
    assert _iou(mask, gt_mask) > 0.99
    inner = _eroded(mask & gt_mask)
    assert _angles_deg(out["normal"].numpy()[inner], gt["normal"][inner]).max() < 1.0
    np.testing.assert_allclose(out["depth"].numpy()[inner], gt["depth"][inner], atol=2e-3)
    np.testing.assert_allclose(out["image"].numpy()[inner], gt["image"][inner], atol=0.02)
    assert (out["depth"].numpy()[~mask] == 0).all() and (out["image"].numpy()[~mask] == 0).all()
    soft = out["soft_mask"].numpy()
    assert soft[mask].min() >= 0.5 - 1e-3 and soft[~mask].max() <= 0.5 + 1e-3


@pytest.fixture(scope="module")
def spot():
    mesh = load_mesh(example_mesh_path())
    mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
    return mesh, DenseGridSDF.from_mesh(mesh, 64)


def test_grid_of_spot_matches_the_ray_caster(spot):
    mesh, grid = spot
    cams = _cameras(4, 96, fov=40)
    gt = render_mesh(mesh, cams)
    with torch.no_grad():
        out = render_sdf(grid, cams)
    mask, gt_mask = out["mask"].numpy(), gt["mask"] > 0.5
    assert _iou(mask, gt_mask) > 0.985  # measured 0.991 at 64^3 (0.997 at 128^3)
    inner = _eroded(mask & gt_mask)
    angles = _angles_deg(out["normal"].numpy()[inner], gt["normal"][inner])
    # central differences one voxel (0.03) apart smooth the ears, horns and muzzle by a few degrees
    assert np.median(angles) < 1.5 and np.percentile(angles, 90) < 5.0
    depth_error = np.abs(out["depth"].numpy()[inner] - gt["depth"][inner])
    assert np.median(depth_error) < 2e-3 and np.percentile(depth_error, 95) < 0.01


def test_grid_from_mesh_is_the_signed_distance(spot):
    mesh, grid = spot
    g = np.random.default_rng(5)
    values = grid.values.detach().numpy().reshape(-1)
    nodes = grid.nodes().reshape(-1, 3).numpy()
    near = np.flatnonzero(np.abs(values) < 0.05)
    pick = np.concatenate([g.choice(near, 150, replace=False), g.choice(len(values), 150, replace=False)])
    truth = -trimesh.proximity.signed_distance(mesh, nodes[pick])  # trimesh: positive inside
    voxel = float(grid.voxel_size[0])
    exact = np.abs(truth) <= 2.5 * voxel
    assert exact.sum() > 100
    np.testing.assert_allclose(values[pick][exact], truth[exact], atol=1e-5)
    assert (np.sign(values[pick]) == np.sign(truth)).all()
    excess = np.abs(values[pick][~exact]) - np.abs(truth[~exact])
    assert (excess > -1e-5).all() and (excess < math.sqrt(3) * voxel).all()


# ------------------------------------------------------------------------------ back hits


def test_back_hits_of_a_sphere_are_analytic():
    cams = _cameras(2, 32, dtype=torch.float64)
    sphere = SphereSDF(CENTER, RADIUS).double()
    with torch.no_grad():
        out = render_sdf(sphere, cams, back=True, epsilon=1e-8, max_steps=200)
    o, d = cams.image_rays()
    oc = o - torch.tensor(CENTER, dtype=torch.float64)
    b = (oc * d).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + RADIUS**2
    hits = out["mask"]
    assert torch.equal(out["back_mask"], hits)
    t_back = (-b + disc.clamp_min(0).sqrt())[hits]
    t_front = (-b - disc.clamp_min(0).sqrt())[hits]
    clear = disc[hits] > 1e-4  # away from the silhouette, where entry and exit coincide
    torch.testing.assert_close(out["back_distance"][hits][clear], t_back[clear], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["distance"][hits][clear], t_front[clear], atol=1e-6, rtol=0)
    assert (out["back_distance"][hits] >= out["distance"][hits] - 1e-9).all()
    # back depth is the camera z of the exit point; back normals face away from the camera
    p = o[hits] + t_back[:, None] * d[hits]
    view = torch.arange(2)[:, None, None].expand_as(hits)[hits]
    z = (p * cams.R[view, 2]).sum(-1) + cams.t[view, 2]
    torch.testing.assert_close(out["back_depth"][hits][clear], z[clear], atol=1e-6, rtol=0)
    assert ((out["back_normal"][hits] * d[hits]).sum(-1)[clear] > 0).all()


# ------------------------------------------------------------------------------ gradients


def _weighted_loss(out: dict, weights: dict) -> torch.Tensor:
    return sum((out[key] * w).sum() for key, w in weights.items())


def _fd_check(field, cams, parameters, **options):
    """Autograd vs central differences of a random linear loss over depth, normal, image and
    soft mask (silhouette pixels included), for the listed (tensor, flat index) entries."""
    opts = {**EXACT, **options}
    with torch.no_grad():
        base = render_sdf(field, cams, **opts)
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(base[k].shape, generator=g, dtype=torch.float64)
               for k in ("depth", "normal", "image", "soft_mask")}
    field.zero_grad()
    _weighted_loss(render_sdf(field, cams, **opts), weights).backward()
    h = 1e-6
    for tensor, i in parameters:
        with torch.no_grad():
            flat = tensor.view(-1)
            flat[i] += h
            plus = _weighted_loss(render_sdf(field, cams, **opts), weights)
            flat[i] -= 2 * h
            minus = _weighted_loss(render_sdf(field, cams, **opts), weights)
            flat[i] += h
        fd = float((plus - minus) / (2 * h))
        analytic = float(tensor.grad.view(-1)[i])
        assert analytic == pytest.approx(fd, rel=1e-3, abs=1e-3 * max(1.0, abs(fd)))
    return base


def test_sphere_gradients_match_finite_differences():
    sphere = SphereSDF(CENTER, RADIUS).double()
    cams = _cameras(2, 24, dtype=torch.float64)
    params = [(sphere.radius, 0)] + [(sphere.center, i) for i in range(3)]
    base = _fd_check(sphere, cams, params)
    # the check covers silhouette pixels: misses with a soft mask well above 0
    misses = ~base["mask"]
    assert (base["soft_mask"][misses] > 0.1).sum() >= 10


def test_grid_gradients_match_finite_differences():
    grid = DenseGridSDF.from_function(SphereSDF(CENTER, RADIUS), 12, dtype=torch.float64)
    cams = _cameras(2, 20, dtype=torch.float64)
    # the entries the rendered pixels depend on most (through hits and through the soft mask)
    out = render_sdf(grid, cams, **EXACT)
    (out["soft_mask"].sum() + out["depth"].sum()).backward()
    order = grid.values.grad.abs().view(-1).argsort(descending=True)
    entries = [(grid.values, int(i)) for i in order[[0, 5, 40]]]
    grid.zero_grad()
    _fd_check(grid, cams, entries)
    # the autograd normal path gives the same gradients as the finite-difference one up to the
    # normal's own difference, and both reach the grid values
    for mode in ("fd", "autograd"):
        grid.zero_grad()
        render_sdf(grid, cams, normal_mode=mode, **EXACT)["normal"].sum().backward()
        assert grid.values.grad.abs().sum() > 0


def test_soft_mask_pulls_the_surface_out_to_missed_pixels():
    """A silhouette pixel that the sphere misses: the soft mask's gradient grows the radius."""
    sphere = SphereSDF(CENTER, RADIUS)
    cams = _cameras(1, 32)
    out = render_sdf(sphere, cams)
    missed = (~out["mask"]) & (out["soft_mask"] > 0.05)
    assert missed.any()
    (-out["soft_mask"][missed].sum()).backward()  # raise the soft mask where the ray missed
    assert sphere.radius.grad < 0  # gradient descent increases the radius


def test_implicit_derivative_matches_the_analytic_sphere():
    """dt/d(radius), dt/d(center) and dt/d(origin) of the first hit against the closed form, and
    torch.autograd.gradcheck of the hit distance w.r.t. radius and ray origins."""
    g = torch.Generator().manual_seed(2)
    sphere = SphereSDF(CENTER, RADIUS).double()
    c = sphere.center.detach().clone()
    o = c + torch.tensor([0.0, 0.0, -2.5], dtype=torch.float64) + 0.05 * torch.randn(16, 3, generator=g,
                                                                                 dtype=torch.float64)
    target = c + 0.3 * torch.randn(16, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(target - o, dim=-1)
    o = o.requires_grad_(True)
    out = sphere_trace(sphere, o, d, radius=3.0, epsilon=1e-12, max_steps=200, guard=1e-12)
    assert out["mask"].all()
    t = out["distance"]
    oc = o.detach() - c
    b = (oc * d).sum(-1)
    root = (b * b - (oc * oc).sum(-1) + RADIUS**2).sqrt()
    torch.testing.assert_close(t.detach(), -b - root, atol=1e-9, rtol=0)
    dr, dc, do = torch.autograd.grad(t.sum(), [sphere.radius, sphere.center, o])
    # implicit function theorem on f(o + t d) = 0: dt/dq = -(df/dq) / (n . d), n the unit normal
    p = o.detach() + t.detach()[:, None] * d
    n = (p - c) / RADIUS
    nd = (n * d).sum(-1)
    torch.testing.assert_close(dr, (1.0 / nd).sum().reshape(()), atol=1e-8, rtol=1e-8)  # df/dr = -1
    torch.testing.assert_close(dc, (n / nd[:, None]).sum(0), atol=1e-8, rtol=1e-8)  # df/dc = -n
    torch.testing.assert_close(do, -n / nd[:, None], atol=1e-8, rtol=1e-8)  # df/do = n

    def distance(radius, origins):
        field = lambda p: torch.linalg.vector_norm(p - c, dim=-1) - radius  # noqa: E731
        return sphere_trace(field, origins, d[:4], radius=3.0, epsilon=1e-12, max_steps=200,
                            guard=1e-12)["distance"]

    radius = torch.tensor(RADIUS, dtype=torch.float64, requires_grad=True)
    origins = o.detach()[:4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(distance, (radius, origins), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_guard_caps_grazing_derivatives():
    """|dt/dr| = 1 / |n . d| grows without bound at the silhouette; `guard` caps it at 1 / guard."""
    sphere = SphereSDF((0.0, 0.0, 0.0), RADIUS).double()
    offsets = torch.tensor([0.0, 0.3, 0.49, 0.4999], dtype=torch.float64)  # the last is grazing
    o = torch.stack([offsets, torch.zeros(4, dtype=torch.float64),
                     torch.full((4,), -2.0, dtype=torch.float64)], dim=-1)
    d = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(4, 3)
    for guard, bound in ((1e-12, None), (0.05, 20.0)):
        sphere.zero_grad()
        out = sphere_trace(sphere, o, d, radius=3.0, epsilon=1e-12, max_steps=400, guard=guard)
        assert out["mask"].all()
        dt_dr = [torch.autograd.grad(t, sphere.radius, retain_graph=True)[0] for t in out["distance"]]
        cos = (RADIUS**2 - offsets**2).sqrt() / RADIUS
        expected = -1.0 / cos
        if bound is None:
            torch.testing.assert_close(torch.stack(dt_dr), expected, rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(torch.stack(dt_dr)[:3], expected[:3], rtol=1e-6, atol=0)
            assert float(dt_dr[3]) == pytest.approx(-bound)


# ------------------------------------------------------------------------------ API behaviour


def test_batched_views_equal_per_view_calls(spot):
    _, grid = spot
    cams = _cameras(3, 24)
    with torch.no_grad():
        together = render_sdf(grid, cams, back=True)
        alone_views = [render_sdf(grid, cams[b], back=True) for b in range(3)]
    for b, alone in enumerate(alone_views):
        for key, value in alone.items():
            torch.testing.assert_close(together[key][b:b + 1], value, atol=1e-6, rtol=0, msg=key)


def test_pixel_subsets_and_chunks_equal_the_full_image(spot):
    _, grid = spot
    cams = _cameras(2, 24)
    with torch.no_grad():
        full = render_sdf(grid, cams)
        chunked = render_sdf(grid, cams, ray_chunk=100)
        rows, cols = torch.meshgrid(torch.arange(3, 21, 4), torch.arange(2, 24, 5), indexing="ij")
        uv = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1).float() + 0.5
        subset = render_sdf(grid, cams, uv=uv)
    for key in ("mask", "depth", "normal", "image", "soft_mask"):
        torch.testing.assert_close(chunked[key], full[key], atol=1e-6, rtol=0, msg=key)
        picked = full[key][:, rows.reshape(-1), cols.reshape(-1)]
        torch.testing.assert_close(subset[key], picked, atol=1e-5, rtol=0, msg=key)
    assert subset["depth"].shape == (2, len(uv))


def test_rays_missing_the_bounding_sphere_cost_nothing_and_the_active_set_shrinks():
    field = CountingField(SphereSDF(CENTER, RADIUS))
    g = torch.Generator().manual_seed(3)
    o = torch.tensor([0.0, 0.0, -3.0]).expand(400, 3)
    d = torch.nn.functional.normalize(torch.randn(400, 3, generator=g) * 0.3
                                      + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    near, far, meets = ray_sphere_interval(o, d, 1.0)
    assert 0 < meets.sum() < 400
    res = march(field, o, d, near, torch.where(meets, far, near), max_steps=500)
    assert not res["stalled"].any()
    assert (res["steps"][~meets] == 0).all()
    assert sum(field.calls) == int(res["steps"].sum())  # evaluations = active rays, step by step
    assert field.calls == sorted(field.calls, reverse=True) and field.calls[-1] < field.calls[0]
    assert res["hit"].any() and not res["hit"][~meets].any()


@pytest.mark.parametrize("relax", [0.7, 1.5])
def test_under_and_over_relaxed_steps_find_the_same_surface(relax):
    """relax < 1 creeps up on the surface; relax > 1 overshoots into it and walks back."""
    sphere = SphereSDF(CENTER, RADIUS)
    cams = _cameras(1, 32)
    with torch.no_grad():
        plain = render_sdf(sphere, cams)
        other = render_sdf(sphere, cams, relax=relax, max_steps=200)
    assert (plain["mask"] != other["mask"]).sum() <= 2  # grazing pixels may differ
    both = plain["mask"] & other["mask"]
    torch.testing.assert_close(other["depth"][both], plain["depth"][both], atol=1e-3, rtol=0)


def test_rays_that_miss_everything():
    grid = DenseGridSDF.from_function(SphereSDF(radius=0.3), 16)
    away = Cameras.look_at((0.0, 0.0, -3.0), target=(0.0, 3.0, 0.0), width=8, height=8)
    past = Cameras.look_at((0.0, 0.0, -3.0), target=(0.8, 0.0, 0.0), fov_deg=5, width=8, height=8)
    for cams in (away, past):  # missing the bounding sphere; meeting it but missing the object
        out = render_sdf(grid, cams, back=True)
        assert not out["mask"].any() and not out["back_mask"].any()
        assert (out["depth"] == 0).all() and out["soft_mask"].max() < 0.01
        (out["soft_mask"].sum() + out["depth"].sum() + out["normal"].sum()).backward()
    assert grid.values.grad.abs().sum() > 0  # the soft mask reaches the grid from the near misses


def test_lambertian_is_the_clipped_cosine_sum():
    g = torch.Generator().manual_seed(4)
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    light = torch.nn.functional.normalize(torch.randn(2, 3, generator=g, dtype=torch.float64), dim=-1)
    inten = torch.tensor([0.7, 0.6], dtype=torch.float64)
    expected = 0.9 * (0.1 + sum(inten[i] * (n @ light[i]).clamp_min(0) for i in range(2)))
    np.testing.assert_allclose(lambertian(n, light, inten, 0.1, 0.9).numpy(), expected.clamp(0, 1).numpy(),
                               atol=1e-12)
    per_point = light.expand(50, 2, 3)  # per-point lights (the ray caster's case) give the same
    np.testing.assert_allclose(lambertian(n, per_point, inten.expand(50, 2), 0.1, 0.9).numpy(),
                               expected.clamp(0, 1).numpy(), atol=1e-12)


def test_headlight_image_is_the_cosine(spot):
    _, grid = spot
    cams = _cameras(1, 24)
    with torch.no_grad():
        out = render_sdf(grid, cams, ambient=0.0)
    hit = out["mask"]
    cos = -(out["normal"] * cams.forward[:, None, None, :]).sum(-1)
    torch.testing.assert_close(out["image"][hit], cos[hit].clamp(0, 1), atol=1e-6, rtol=0)
    assert math.isclose(float(out["image"][~hit].abs().sum()), 0.0)


def test_soft_false_skips_only_the_silhouette():
    field = SphereSDF(radius=0.5)
    cams = Cameras.look_at((0.0, 0.3, 2.5), width=24, height=20)
    with torch.no_grad():
        full = render_sdf(field, cams)
        display = render_sdf(field, cams, soft=False)
    assert "soft_mask" in full and "soft_mask" not in display and "min_sdf" not in display
    for key in ("mask", "depth", "normal", "image"):
        assert torch.equal(full[key], display[key]), key


def test_hash_grid_parameters_get_correct_gradients():
    """Sphere tracing a hash-grid SDF: d(loss)/d(table entries, MLP weights) vs central differences."""
    from hashgrid_checks import assert_parameter_gradients_match, small_hash_sdf

    field = small_hash_sdf()
    cams = Cameras.look_at([[0.0, 0.4, 2.5]], fov_deg=30, width=10, height=10).to(dtype=torch.float64)

    def loss() -> torch.Tensor:
        # soft_steps=30: the soft mask's gradient is exact only at the exact argmin along the ray
        # (envelope theorem); the default 6 golden-section steps leave ~1% on a hash grid
        out = render_sdf(field, cams, normal_mode="autograd", guard=1e-12, epsilon=1e-10, max_steps=200,
                         soft_steps=30)
        return (out["depth"].sum() + (out["normal"][..., 1] * out["mask"]).sum()
                + out["soft_mask"].square().sum())

    assert_parameter_gradients_match(field, loss, rel=1e-3, abs_=1e-6)
