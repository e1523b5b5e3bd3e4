"""Soft Rasterizer: the culled fast path against the dense reference, SoftRas's formulas on one
triangle, the hard limit against the ray caster, gradients against finite differences, batching,
chunking and depth ordering of the colour softmax."""

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from zerolevel.cameras import Cameras
from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
from zerolevel.render.raycast import render_mesh
from zerolevel.render import softras_silhouette
from zerolevel.render.softras import soft_render, soft_silhouette
from zerolevel.render.softras_scene import build_scene

from softras_reference import reference_soft_render, reference_soft_silhouette  # tests/ (conftest)

SPOT = Path(__file__).resolve().parents[1] / "src" / "zerolevel" / "data" / "spot.obj"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are small: on a busy 2-core box two OpenMP threads made them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _icosphere(subdivisions: int, radius: float, noise: float = 0.0, seed: int = 0,
               dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = torch.tensor(mesh.vertices, dtype=dtype)
    v = v + noise * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return v, torch.tensor(mesh.faces)


def _iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SoftRas's silhouette IoU loss 1 - |A * T| / |A + T - A * T|."""
    inter = (pred * target).sum()
    return 1 - inter / (pred + target - pred * target).sum()


def _camera_at_origin(size: int = 32, focal: float = 1.0, centre: float = 0.0) -> Cameras:
    K = torch.tensor([[focal, 0, centre], [0, focal, centre], [0, 0, 1]], dtype=torch.float64)
    return Cameras(K, torch.eye(4, dtype=torch.float64), size, size)


def _finite_difference(loss, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = h
        step = step.view_as(x)
        flat[i] = (loss(x + step) - loss(x - step)) / (2 * h)
    return grad


# ---------------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("sigma", [1e-4, 3e-3])
@pytest.mark.parametrize("min_group", [softras_silhouette._MIN_GROUP, 1])  # faces pair by pair; by box shape
def test_fast_silhouette_matches_dense_reference(sigma, min_group, monkeypatch):
    monkeypatch.setattr(softras_silhouette, "_MIN_GROUP", min_group)
    v, f = _icosphere(1, 0.7, noise=0.05)
    cams = Cameras.ring(3, width=24, height=20).to(dtype=torch.float64)
    ref = reference_soft_silhouette(v, f, cams, sigma=sigma)
    assert 0.1 < ref.mean() < 0.9  # the mesh is partly in view
    for max_pairs in (1 << 20, 97):  # one chunk; many chunks
        fast = soft_silhouette(v, f, cams, sigma=sigma, max_pairs=max_pairs)
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("options", [
    {},
    {"double_sided": False, "background": 0.25},
    {"perspective_correct": False, "sigma": 1e-3, "gamma": 1e-2},
    {"near": 2.0, "far": 2.9, "sigma": 1e-3, "gamma": 1e-3},  # part of the sphere beyond `far`
])
def test_fast_render_matches_dense_reference(options):
    v, f = _icosphere(1, 0.7, noise=0.05)
    cams = Cameras.ring(2, width=20, height=20, azimuth_start_deg=10).to(dtype=torch.float64)
    colours = torch.rand(v.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = reference_soft_render(v, f, cams, colours, **options)
    for max_pairs in (1 << 20, 53):
        fast = soft_render(v, f, cams, colours, max_pairs=max_pairs, **options)
        torch.testing.assert_close(fast["image"], ref["image"], rtol=0, atol=1e-10)
        torch.testing.assert_close(fast["alpha"], ref["alpha"], rtol=0, atol=1e-12)
    face_colours = torch.rand(len(f), 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fast = soft_render(v, f, cams, face_attributes=face_colours, **options)
    ref = reference_soft_render(v, f, cams, face_attributes=face_colours, **options)
    torch.testing.assert_close(fast["image"], ref["image"], rtol=0, atol=1e-10)


def test_culling_visits_few_pairs():
    """The candidate pairs of a 1280-face sphere in 8 views at 64^2 are a small fraction of all."""
    v, f = _icosphere(3, 0.5, dtype=torch.float32)
    cams = Cameras.ring(8)
    scene = build_scene(v, f, cams, sigma=1e-4, dist_eps=1e-4)
    dense = len(cams) * 64 * 64 * len(f)
    assert 0 < int(scene.starts[-1]) < 0.01 * dense


# ---------------------------------------------------------------------------------------- formulas
def test_single_triangle_matches_softras_formula():
    """D = sigmoid(+-d^2 / sigma) with d in NDC (image width = 2 units): inside, outside beside an
    edge, outside beyond a corner; zero beyond the dist_eps cut-off."""
    cams = _camera_at_origin(32)  # uv = (x, y) at z = 1
    v = torch.tensor([[2.0, 2.0, 1.0], [30.0, 2.0, 1.0], [2.0, 30.0, 1.0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2]])
    sigma, ndc = 0.05, 2.0 / 32
    alpha = soft_silhouette(v, f, cams, sigma=sigma, dist_eps=1e-6)[0]
    cases = {(5, 10): +3.5,  # row 5 (v = 5.5), column 10: inside, 3.5 px above the edge v = 2
             (0, 10): -1.5,  # 1.5 px outside the edge v = 2
             (0, 0): -1.5 * 2 ** 0.5}  # beyond the corner (2, 2)
    for (row, col), d_px in cases.items():
        expected = torch.sigmoid(torch.tensor(np.sign(d_px) * (d_px * ndc) ** 2 / sigma))
        torch.testing.assert_close(alpha[row, col], expected.double(), rtol=1e-10, atol=0)
    # the cut-off: D < dist_eps outside means the triangle is ignored there
    cut = soft_silhouette(v, f, cams, sigma=1e-3, dist_eps=1e-4)[0]
    r_px = (1e-3 * np.log(1 / 1e-4 - 1)) ** 0.5 / ndc  # ~1.5 px
    assert r_px < 2.5 and cut[0, 10] > 0 and cut[31, 31] == 0 and cut[5, 10] > 0.99


def test_front_triangle_occludes_back_as_gamma_goes_to_zero():
    cams = _camera_at_origin(32, focal=32.0, centre=16.0)
    tri = torch.tensor([[-0.5, -0.5, 1.0], [0.5, -0.4, 1.0], [0.0, 0.6, 1.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)

    def centre_colour(z_red: float, z_green: float, gamma: float) -> torch.Tensor:
        v = torch.cat([tri * z_red, tri * z_green])  # same screen triangle, different depths
        out = soft_render(v, faces, cams, face_attributes=colours, sigma=1e-5, gamma=gamma)
        return out["image"][0, 16, 16]

    red_front = centre_colour(2.0, 3.0, 1e-4)
    green_front = centre_colour(3.0, 2.0, 1e-4)
    assert red_front[0] > 0.999 and red_front[1] < 1e-3
    assert green_front[1] > 0.999 and green_front[0] < 1e-3
    blend = centre_colour(2.0, 3.0, 1.0)  # a large gamma averages the layers
    assert abs(blend[0] - blend[1]) < 0.05 and blend[0] > 0.3


# ---------------------------------------------------------------------------------------- hard limit
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("name", ["icosphere", "spot"])
def test_hard_limit_matches_ray_caster(name):
    if name == "spot":
        mesh = load_mesh(SPOT)
        mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
    else:
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    cams = Cameras.sphere(6, distance=3.0, fov_deg=40, width=80, height=64)
    truth = render_mesh(mesh, cams)["mask"] > 0.5
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    soft = soft_silhouette(v, torch.tensor(mesh.faces), cams, sigma=1e-7).numpy()
    assert truth.mean() > 0.1
    assert _iou(soft > 0.5, truth) > 0.99
    assert ((soft > 0.5) != truth).mean() < 0.002


# ---------------------------------------------------------------------------------------- gradients
def test_silhouette_gradient_matches_finite_differences():
    v, f = _icosphere(0, 0.6, noise=0.05)
    cams = Cameras.ring(2, width=16, height=16, azimuth_start_deg=20).to(dtype=torch.float64)
    options = {"sigma": 1e-2, "dist_eps": 1e-12}
    target = soft_silhouette(_icosphere(0, 0.6, noise=0.1, seed=3)[0], f, cams, **options)

    def loss(x):
        return _iou_loss(soft_silhouette(x, f, cams, **options), target)

    x = v.clone().requires_grad_()
    loss(x).backward()
    fd = _finite_difference(loss, v.detach())
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(x.grad, fd, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("min_group", [softras_silhouette._MIN_GROUP, 1])
def test_silhouette_gradient_matches_dense_reference_autograd(min_group, monkeypatch):
    """The analytic backward of the fast silhouette equals autograd through the dense reference,
    in one chunk and in many, w.r.t. vertices and cameras."""
    monkeypatch.setattr(softras_silhouette, "_MIN_GROUP", min_group)
    v, f = _icosphere(1, 0.6, noise=0.04, seed=2)
    cams = Cameras.ring(3, width=20, height=20, azimuth_start_deg=10).to(dtype=torch.float64)
    weights = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    options = {"sigma": 3e-3, "dist_eps": 1e-10}

    def grads(render, **extra):
        x = v.clone().requires_grad_()
        K = cams.K.clone().requires_grad_()
        (render(x, f, Cameras(K, cams.world_to_camera, 20, 20), **options, **extra) * weights).sum().backward()
        return x.grad, K.grad

    expected = grads(reference_soft_silhouette)
    assert expected[0].abs().max() > 1e-2
    for max_pairs in (1 << 20, 61):
        for got, want in zip(grads(soft_silhouette, max_pairs=max_pairs), expected):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_colour_gradient_matches_finite_differences():
    v, f = _icosphere(0, 0.6, noise=0.05)
    cams = Cameras.ring(2, width=16, height=16, azimuth_start_deg=20).to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    colours = torch.rand(v.shape[0], 3, generator=gen, dtype=torch.float64)
    target = torch.rand(2, 16, 16, 3, generator=gen, dtype=torch.float64)
    target_alpha = soft_silhouette(_icosphere(0, 0.6, noise=0.1, seed=3)[0], f, cams, sigma=1e-2)
    options = {"sigma": 1e-2, "gamma": 0.05, "near": 1.0, "far": 5.0, "dist_eps": 1e-12}
    n = v.numel()

    def loss(params):
        out = soft_render(params[:n].view_as(v), f, cams, params[n:].view_as(colours), **options)
        return ((out["image"] - target) ** 2).mean() + _iou_loss(out["alpha"], target_alpha)

    params = torch.cat([v.flatten(), colours.flatten()]).requires_grad_()
    loss(params).backward()
    fd = _finite_difference(loss, params.detach())
    assert fd[:n].abs().max() > 1e-3 and fd[n:].abs().max() > 1e-4
    torch.testing.assert_close(params.grad, fd, rtol=1e-4, atol=1e-7)


def test_chunked_gradients_equal_single_chunk():
    """Many checkpointed chunks give the same values and gradients as one chunk, in float32."""
    v, f = _icosphere(2, 0.6, noise=0.02, dtype=torch.float32)
    cams = Cameras.ring(2, width=32, height=32)
    colours = torch.rand(v.shape[0], 3, generator=torch.Generator().manual_seed(5))
    grads = []
    for max_pairs in (1 << 20, 500):
        x, c = v.clone().requires_grad_(), colours.clone().requires_grad_()
        out = soft_render(x, f, cams, c, sigma=1e-4, gamma=1e-3, max_pairs=max_pairs)
        sil = soft_silhouette(x, f, cams, max_pairs=max_pairs)
        (out["image"].square().sum() + out["alpha"].sum() + sil.square().sum()).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
        grads.append((out["image"].detach(), sil.detach(), x.grad, c.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- batching
def test_batched_equals_one_at_a_time_and_broadcasts():
    f = _icosphere(1, 0.6)[1]
    verts = torch.stack([_icosphere(1, 0.6, noise=0.05, seed=s)[0] for s in range(3)])
    cams = Cameras.ring(3, width=24, height=24, azimuth_start_deg=5).to(dtype=torch.float64)
    colours = torch.rand(3, verts.shape[1], 3, generator=torch.Generator().manual_seed(6),
                         dtype=torch.float64)
    sil = soft_silhouette(verts, f, cams)
    out = soft_render(verts, f, cams, colours, sigma=1e-4)
    assert sil.shape == (3, 24, 24) and out["image"].shape == (3, 24, 24, 3)
    for b in range(3):
        torch.testing.assert_close(sil[b], soft_silhouette(verts[b], f, cams[b])[0])
        one = soft_render(verts[b:b + 1], f, cams[b], colours[b], sigma=1e-4)
        torch.testing.assert_close(out["image"][b], one["image"][0])
        torch.testing.assert_close(out["alpha"][b], one["alpha"][0])
    # one mesh seen by three cameras; three meshes seen by one camera
    shared = soft_silhouette(verts[0], f, cams)
    torch.testing.assert_close(shared, soft_silhouette(verts[0].expand(3, -1, -1), f, cams))
    one_camera = soft_silhouette(verts, f, cams[0])
    torch.testing.assert_close(one_camera[2], soft_silhouette(verts[2], f, cams[0])[0])
    assert not torch.allclose(one_camera[0], one_camera[2])
    with pytest.raises(ValueError):
        soft_silhouette(verts[:2], f, cams)


def test_mesh_behind_camera_renders_background():
    v, f = _icosphere(1, 0.5)
    cams = Cameras.look_at([0.0, 0.0, -3.0], target=[0.0, 0.0, -6.0], width=16, height=16)
    out = soft_render(v, f, cams, background=0.3)
    assert out["alpha"].abs().max() == 0
    torch.testing.assert_close(out["image"], torch.full((1, 16, 16, 3), 0.3, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    v, f = _icosphere(2, 0.6, noise=0.02, dtype=torch.float32)
    cams = Cameras.ring(4)
    colours = torch.rand(v.shape[0], 3, generator=torch.Generator().manual_seed(7))
    cpu = soft_render(v, f, cams, colours)
    gpu = soft_render(v.cuda(), f.cuda(), cams.to(device="cuda"), colours.cuda())
    assert gpu["image"].device.type == "cuda"
    torch.testing.assert_close(gpu["image"].cpu(), cpu["image"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu["alpha"].cpu(), cpu["alpha"], rtol=1e-4, atol=1e-4)
    grads = []
    for device in ("cpu", "cuda"):  # the silhouette's analytic backward on both
        x = v.to(device).requires_grad_()
        soft_silhouette(x, f.to(device), cams.to(device=device)).square().sum().backward()
        grads.append(x.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-3)


def test_degenerate_faces_and_empty_mesh():
    """Zero-area faces (a repeated vertex, three collinear vertices) match the reference with finite
    gradients; a mesh without faces renders the background."""
    v, f = _icosphere(1, 0.6)
    v = torch.cat([v, (v[:1] + v[1:2]) / 2])
    f = torch.cat([f, torch.tensor([[0, 0, 1], [0, 1, len(v) - 1]])]).int()
    cams = Cameras.ring(2, width=20, height=20).to(dtype=torch.float64)
    x = v.clone().requires_grad_()
    out = soft_render(x, f, cams, sigma=1e-3, gamma=1e-3)
    ref = reference_soft_render(v, f, cams, sigma=1e-3, gamma=1e-3)
    torch.testing.assert_close(out["image"], ref["image"], rtol=0, atol=1e-10)
    (out["image"].sum() + out["alpha"].sum()).backward()
    assert torch.isfinite(x.grad).all()
    empty = soft_render(v, torch.zeros(0, 3, dtype=torch.long), cams, background=0.5)
    assert empty["alpha"].abs().max() == 0 and (empty["image"] == 0.5).all()
