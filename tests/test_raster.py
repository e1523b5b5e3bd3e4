"""Differentiable rasteriser (`zerolevel.render.raster`): forward against the Embree ground truth,
a brute-force reference for the silhouette antialiasing and for the edge topology, gradients against
central finite differences (silhouettes included), the mask-area derivative of a sphere against its
analytic value, batching, and a 300k-face smoke test.

Finite differences and antialiasing. The hard mask (which triangle covers each pixel centre) is
piecewise constant in the vertex positions, so its finite differences are zero almost everywhere
and say nothing about silhouettes. The antialiased image is continuous in the vertex positions as
long as visibility (the triangle id of every pixel) and the set of silhouette crossings do not
change: the blend weights are smooth functions of the projected edge end points. So the gradient
test compares autograd with central differences of the very same forward function, in float64,
with a step (1e-6 world units, ~2e-5 pixel) far below the distance of any pixel centre to an
edge, and asserts that the triangle-id images at +h and -h are identical (visibility fixed): the
difference quotient then measures exactly the smooth part that autograd differentiates. The
silhouette vertices tested are those with the largest antialiased-mask gradient, and the test
checks that the hard mask does not change over the same step (its difference quotient is 0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from zerolevel.cameras import Cameras
from zerolevel.data import example_mesh_path
from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
from zerolevel.render.antialias import antialias, edge_topology
from zerolevel.render.fragments import ViewMeshes, interpolate
from zerolevel.render.raster import face_normals, rasterize, render_normals, vertex_normals
from zerolevel.render.raycast import render_mesh


def _tensors(mesh: trimesh.Trimesh, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(np.asarray(mesh.vertices), dtype=dtype), torch.tensor(np.asarray(mesh.faces))


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.einsum("...j,...j->...", a, b)
    cos /= np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _erode(mask: np.ndarray, r: int = 1) -> np.ndarray:
    """Binary erosion of (B, H, W) masks by a (2r+1)^2 square."""
    out = mask.copy()
    H, W = mask.shape[1:]
    pad = np.pad(mask, ((0, 0), (r, r), (r, r)))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= pad[:, r + dy:r + dy + H, r + dx:r + dx + W]
    return out


@pytest.fixture(scope="module")
def spot() -> trimesh.Trimesh:
    mesh = load_mesh(example_mesh_path())
    return transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))


def _bumpy_sphere(subdivisions: int, seed: int = 0, amount: float = 0.03) -> trimesh.Trimesh:
    """An icosphere with radial noise: generic positions (no symmetric ties), still convex-ish."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    rng = np.random.default_rng(seed)
    v = mesh.vertices * (1 + amount * rng.uniform(-1, 1, size=(len(mesh.vertices), 1)))
    return trimesh.Trimesh(v, mesh.faces, process=False)


# --------------------------------------------------------------------------- forward vs ground truth
def _compare_with_raycaster(mesh: trimesh.Trimesh, cams: Cameras, smooth: bool):
    v, f = _tensors(mesh)
    out = render_normals(v, f, cams, smooth=smooth)
    gt = render_mesh(mesh, cams, smooth=smooth)
    hard = out["fragments"].mask.numpy() > 0
    gt_mask = gt["mask"] > 0
    iou = (hard & gt_mask).sum() / (hard | gt_mask).sum()
    inner = _erode(gt_mask & hard, 1)
    angle = _angle_deg(out["normal"].detach().numpy()[inner], gt["normal"][inner])
    depth_err = np.abs(out["depth"].detach().numpy() - gt["depth"])[inner]
    return iou, angle, depth_err, out, gt


def test_forward_matches_raycaster_on_a_sphere():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    cams = Cameras.sphere(3, distance=3.0, fov_deg=40, width=64, height=64)
    iou, angle, depth_err, out, gt = _compare_with_raycaster(mesh, cams, smooth=True)
    assert iou > 0.99
    assert angle.max() < 1.0
    assert depth_err.max() < 1e-4
    n = out["normal"].detach().numpy()[gt["mask"] > 0]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-6)
    bg = out["fragments"].mask.numpy() == 0
    assert np.all(out["normal"].detach().numpy()[bg] == 0)
    assert np.all(out["depth"].detach().numpy()[bg] == 0)


def test_forward_matches_raycaster_on_spot(spot):
    cams = Cameras.sphere(3, distance=2.5, fov_deg=40, width=96, height=96)
    iou, angle, depth_err, _, _ = _compare_with_raycaster(spot, cams, smooth=True)
    assert iou > 0.99
    # area-weighted (ours) vs trimesh's angle-weighted vertex normals on an irregular mesh
    assert np.median(angle) < 1.0 and np.percentile(angle, 99) < 6.0
    assert np.percentile(depth_err, 99) < 1e-4
    iou, angle, depth_err, _, _ = _compare_with_raycaster(spot, cams, smooth=False)
    assert iou > 0.99
    assert np.percentile(angle, 99.5) < 0.1  # the same face normals where both see the same face
    assert np.percentile(depth_err, 99) < 1e-4


def test_interpolated_positions_lie_on_the_pixel_rays():
    """Perspective-correct barycentrics: the interpolated world point is on the pixel-centre ray."""
    mesh = _bumpy_sphere(3)
    v, f = _tensors(mesh)
    K = torch.tensor([[70.0, 0.0, 27.0], [0.0, 62.0, 19.0], [0.0, 0.0, 1.0]])
    base = Cameras.sphere(2, distance=2.2, width=8, height=8)
    cams = Cameras(K, base.world_to_camera, width=50, height=36)  # non-square, off-centre
    frags = rasterize(v, f, cams)
    pos = interpolate(v, frags)  # (B, H, W, 3)
    o, d = cams.to(dtype=torch.float64).image_rays()
    m = frags.face >= 0
    rel = (pos - o)[m]
    assert torch.linalg.cross(rel, d[m], dim=-1).norm(dim=-1).max() < 1e-9
    z = torch.einsum("bhwj,bj->bhw", pos - o, cams.forward.double())
    assert torch.allclose(z[m], frags.depth[m], atol=1e-9)
    b = frags.pixel_barycentric
    assert torch.allclose(b.sum(-1), torch.ones_like(b[:, 0])) and b.min() > -1e-5


def test_zbuffer_and_embree_visibility_agree(spot):
    """The z-buffer (default) against Embree's pixel-centre rays, which it falls back to for a
    view with triangles across the camera plane (the second camera sits inside the mesh)."""
    v, f = _tensors(spot)
    cams = Cameras.cat([Cameras.sphere(3, distance=2.2, fov_deg=50, width=80, height=64)[:1],
                        Cameras.look_at([0.0, 0.05, 0.0], target=[1.0, 0.0, 0.2], fov_deg=90,
                                        width=80, height=64),
                        Cameras.sphere(3, distance=2.2, fov_deg=50, width=80, height=64)[1:]])
    z = rasterize(v, f, cams, visibility="zbuffer")
    e = rasterize(v, f, cams, visibility="embree")
    assert (e.face[1] >= 0).all()  # inside: every ray hits
    assert (z.face != e.face).sum() <= 3  # ties between faces at shared edges may go either way
    assert torch.equal(z.face >= 0, e.face >= 0)
    same = z.face.reshape(-1)[z.pixel] == e.face.reshape(-1)[e.pixel]
    assert torch.allclose(z.pixel_barycentric[same], e.pixel_barycentric[same])


def test_views_zbuffered_in_groups_equal_views_at_once(spot):
    """The z-buffer takes views in groups of about `max_triangles` (view, face) pairs: any grouping,
    down to one view at a time, gives the same pixels and faces, a plane-crossing view included."""
    from zerolevel.render.visibility import visible_faces

    v, f = _tensors(spot)
    cams = Cameras.cat([Cameras.sphere(3, distance=2.2, fov_deg=50, width=48, height=40)[:2],
                        Cameras.look_at([0.0, 0.05, 0.0], target=[1.0, 0.0, 0.2], fov_deg=90, width=48, height=40),
                        Cameras.sphere(3, distance=2.2, fov_deg=50, width=48, height=40)[2:]])
    whole = visible_faces(v, f, cams, False, "zbuffer")
    for limit in (1, len(f) + 1, 3 * len(f)):
        pixel, face = visible_faces(v, f, cams, False, "zbuffer", max_triangles=limit)
        assert np.array_equal(pixel, whole[0]) and np.array_equal(face, whole[1])


# --------------------------------------------------------------------------- topology reference
def _reference_edges(faces: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(lo, hi) -> [(face, +1 if the face runs lo -> hi else -1), ...], by a dictionary."""
    table: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for fi, tri in enumerate(faces.tolist()):
        for k in range(3):
            a, b = tri[(k + 1) % 3], tri[(k + 2) % 3]
            table.setdefault((min(a, b), max(a, b)), []).append((fi, 1 if a < b else -1))
    return table


def test_edge_topology_matches_reference(spot):
    # spot, plus an open, non-manifold variant: a hole and a fin sharing an existing edge
    faces = np.asarray(spot.faces)
    open_faces = np.concatenate([faces[40:], [[faces[100, 0], faces[100, 1], len(spot.vertices)]]])
    for fs in (faces, open_faces):
        topo = edge_topology(torch.tensor(fs))
        ref = _reference_edges(fs)
        got: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for (a, b), (f0, f1), (s0, s1) in zip(topo.edges.tolist(), topo.faces.tolist(),
                                              topo.sign.tolist()):
            got.setdefault((a, b), []).extend([(f0, s0)] if f1 < 0 else [(f0, s0), (f1, s1)])
            assert (f1 < 0) == (s1 == 0)
            if f1 >= 0:
                assert len(ref[(a, b)]) == 2  # only manifold edges are listed as pairs
        assert got.keys() == ref.keys()
        assert all(sorted(got[k]) == sorted(ref[k]) for k in ref)
    assert (topo.faces[:, 1] < 0).sum() > 10  # the open variant has boundary edges


# --------------------------------------------------------------------------- antialias reference
def _cross2(p: np.ndarray, q: np.ndarray) -> float:
    return p[0] * q[1] - p[1] * q[0]


def _reference_antialias(image: np.ndarray, face: np.ndarray, depth: np.ndarray, verts: np.ndarray,
                         faces: np.ndarray, cam: Cameras) -> np.ndarray:
    """One view, brute force: every pixel pair against every silhouette edge, in numpy.

    Silhouette edges from 3D face orientation (consistently wound meshes); the crossing depth from
    the closest point of the 3D edge to the crossing's ray. Rules as documented in `antialias`.
    """
    H, W, _ = image.shape
    K = cam.K[0].double().numpy()
    R, t = cam.R[0].double().numpy(), cam.t[0].double().numpy()
    centre = cam.centers[0].double().numpy()
    pc = verts @ R.T + t
    uv = (pc @ K.T)[:, :2] / pc[:, 2:3]
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front_facing = np.einsum("ij,ij->i", n, tri[:, 0] - centre) < 0
    sil = []
    edge_faces: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for fi, tr in enumerate(faces.tolist()):
        for k in range(3):
            a, b = tr[(k + 1) % 3], tr[(k + 2) % 3]
            edge_faces.setdefault((min(a, b), max(a, b)), []).append((fi, tr[k]))
    for (a, b), lst in edge_faces.items():
        if len(lst) == 2 and front_facing[lst[0][0]] == front_facing[lst[1][0]]:
            continue
        sil.append((a, b, lst[0][1]))
    sil = np.array(sil)
    A, Bp, O = uv[sil[:, 0]], uv[sil[:, 1]], uv[sil[:, 2]]
    D = Bp - A
    steep = np.abs(D[:, 1]) >= np.abs(D[:, 0])
    Kinv = np.linalg.inv(K)
    out = image.copy()
    flat_img, flat_out = image.reshape(-1, image.shape[-1]), out.reshape(-1, image.shape[-1])
    for down in (False, True):
        for i in range(H - 1 if down else H):
            for j in range(W if down else W - 1):
                p0 = i * W + j
                p1 = p0 + (W if down else 1)
                c0 = np.array([j + 0.5, i + 0.5])
                axis = np.array([0.0, 1.0]) if down else np.array([1.0, 0.0])
                use = steep != down
                # segment c0 + s * axis (s in [0, 1)) against edge A + u D (u in [0, 1])
                den = D[:, 0] * axis[1] - D[:, 1] * axis[0]
                with np.errstate(divide="ignore", invalid="ignore"):
                    s = ((A[:, 0] - c0[0]) * D[:, 1] - (A[:, 1] - c0[1]) * D[:, 0]) / -den
                    u = ((A[:, 0] - c0[0]) * axis[1] - (A[:, 1] - c0[1]) * axis[0]) / -den
                hit = use & (den != 0) & (s >= 0) & (s < 1) & (u >= 0) & (u <= 1)
                best = None
                for e in np.flatnonzero(hit):
                    x = c0 + s[e] * axis
                    side_o = np.sign(_cross2(D[e], O[e] - A[e]))
                    side_1 = np.sign(_cross2(D[e], c0 + axis - A[e]))
                    front, back, c = (p1, p0, 1 - s[e]) if side_o == side_1 else (p0, p1, s[e])
                    # depth of the 3D edge where the crossing's ray passes closest
                    r = Kinv @ np.array([x[0], x[1], 1.0])
                    r = R.T @ r
                    Pa, Pb = verts[sil[e, 0]], verts[sil[e, 1]]
                    M = np.stack([r, -(Pb - Pa)], 1)
                    lam, mu = np.linalg.lstsq(M, Pa - centre, rcond=None)[0]
                    z_e = R[2] @ (Pa + mu * (Pb - Pa)) + t[2]
                    if face.reshape(-1)[front] < 0:
                        continue
                    if face.reshape(-1)[back] >= 0 and depth.reshape(-1)[back] <= z_e:
                        continue
                    if best is None or z_e < best[0]:
                        best = (z_e, front, back, c)
                if best is not None:
                    _, front, back, c = best
                    alpha = 0.5 - c
                    target = front if alpha > 0 else back
                    flat_out[target] += alpha * (flat_img[back] - flat_img[front])
    return out


@pytest.mark.parametrize("which", ["sphere", "spot"])
def test_antialias_matches_brute_force_reference(which, spot):
    mesh = _bumpy_sphere(2) if which == "sphere" else spot
    size = 32 if which == "sphere" else 40
    cams = Cameras.sphere(2, distance=2.4, fov_deg=40, width=size, height=size)[1:]
    v, f = _tensors(mesh)
    frags = rasterize(v, f, cams)
    rng = np.random.default_rng(3)
    image = torch.tensor(rng.uniform(size=(1, size, size, 2)))
    image[..., 0] *= frags.mask  # one channel a masked colour, one with a non-zero background
    got = antialias(image, frags, v, f, cams).numpy()[0]
    ref = _reference_antialias(image.numpy()[0], frags.face.numpy()[0], frags.depth.numpy()[0],
                               v.numpy(), f.numpy(), cams)
    changed = np.abs(ref - image.numpy()[0]).max(-1) > 0
    assert changed.sum() > (20 if which == "sphere" else 40)  # the test is not vacuous
    assert np.allclose(got, ref, atol=1e-9)


def test_antialiased_mask_approximates_coverage(spot):
    for mesh in (trimesh.creation.icosphere(subdivisions=4, radius=0.8), spot):
        cams = Cameras.sphere(2, distance=2.6, fov_deg=40, width=64, height=64)
        v, f = _tensors(mesh)
        out = render_normals(v, f, cams)
        cov = render_mesh(mesh, cams, supersample=8)["mask"]
        hard = out["fragments"].mask.numpy()
        aa = out["mask"].numpy()
        assert aa.min() >= 0 and aa.max() <= 1
        err_aa, err_hard = np.abs(aa - cov).sum(), np.abs(hard - cov).sum()
        assert err_aa < 0.35 * err_hard, (err_aa, err_hard)
        assert abs(aa.sum() - cov.sum()) < 0.01 * cov.sum()


# --------------------------------------------------------------------------- gradients
def _loss_terms(v: torch.Tensor, f: torch.Tensor, cams: Cameras, weights: dict[str, torch.Tensor]):
    out = render_normals(v, f, cams)
    terms = {k: (weights[k] * out[k]).sum() for k in ("normal", "mask", "depth")}
    return terms, out["fragments"].face


def test_gradients_match_central_differences_including_silhouettes():
    mesh = _bumpy_sphere(2, seed=1, amount=0.08)
    v0, f = _tensors(mesh)
    cams = Cameras.sphere(2, distance=2.6, fov_deg=40, width=40, height=40)
    rng = np.random.default_rng(4)
    weights = {"normal": torch.tensor(rng.normal(size=(2, 40, 40, 3))),
               "mask": torch.tensor(rng.normal(size=(2, 40, 40))),
               "depth": torch.tensor(rng.normal(size=(2, 40, 40)))}
    v = v0.clone().requires_grad_(True)
    terms, _ = _loss_terms(v, f, cams, weights)
    grad = torch.autograd.grad(sum(terms.values()), v)[0]
    grad_mask = torch.autograd.grad(_loss_terms(v, f, cams, weights)[0]["mask"], v)[0]

    def loss(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            t, face = _loss_terms(x, f, cams, weights)
        return float(sum(t.values())), face

    h = 1e-6
    # silhouette vertices: where the antialiased mask has the largest gradient
    sil = torch.argsort(grad_mask.norm(dim=1), descending=True)[:3].tolist()
    assert grad_mask[sil].norm(dim=1).min() > 1.0
    interior = int(torch.argmin(torch.where(grad_mask.norm(dim=1) == 0, -grad.norm(dim=1), np.inf)))
    assert grad_mask[interior].abs().max() == 0 and grad[interior].abs().max() > 0.1
    checks = [(i, k) for i in sil + [interior] for k in range(3)]
    for i, k in checks:
        e = torch.zeros_like(v0)
        e[i, k] = h
        (lp, fp), (lm, fm) = loss(v0 + e), loss(v0 - e)
        assert torch.equal(fp, fm), "visibility changed: the step is too large"
        fd = (lp - lm) / (2 * h)
        assert abs(fd - grad[i, k].item()) < 1e-5 * max(1.0, abs(fd)), (i, k, fd, grad[i, k].item())
    # a random direction moving every vertex at once
    direction = torch.tensor(rng.normal(size=v0.shape))
    (lp, fp), (lm, fm) = loss(v0 + h * direction), loss(v0 - h * direction)
    assert torch.equal(fp, fm)
    fd = (lp - lm) / (2 * h)
    assert abs(fd - (grad * direction).sum().item()) < 1e-5 * max(1.0, abs(fd))
    # the hard mask gives no silhouette signal at all: its differences vanish at that step
    i = sil[0]
    e = torch.zeros_like(v0)
    e[i] = h * grad_mask[i] / grad_mask[i].norm()
    hard_p = rasterize(v0 + e, f, cams).mask
    hard_m = rasterize(v0 - e, f, cams).mask
    assert torch.equal(hard_p, hard_m)


def test_mask_area_derivative_matches_the_analytic_sphere():
    """d(antialiased mask area)/d(scale) against the projected disc area pi rho^2 of the sphere."""
    r, D, size, fov = 0.8, 3.0, 128, 40.0
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=r)
    v0, f = _tensors(mesh)
    cams = Cameras.look_at([0.3, 0.4, -D * math.sqrt(1 - 0.25 / D**2)], fov_deg=fov, width=size,
                           height=size)  # off the mesh's symmetry axes, distance D from the centre
    focal = cams.K[0, 0, 0].item()
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    area = render_normals(v0 * scale, f, cams)["mask"].sum()
    (d_area,) = torch.autograd.grad(area, scale)
    # silhouette cone half-angle asin(r / D); image radius f tan = f r / sqrt(D^2 - r^2) (centred)
    rho = focal * r / math.sqrt(D**2 - r**2)
    drho_dr = focal * D**2 / (D**2 - r**2) ** 1.5
    analytic_area, analytic_d = math.pi * rho**2, 2 * math.pi * rho * drho_dr * r  # d/ds at s = 1
    assert abs(area.item() - analytic_area) < 0.01 * analytic_area
    assert abs(d_area.item() - analytic_d) < 0.02 * analytic_d, (d_area.item(), analytic_d)


# --------------------------------------------------------------------------- batching
def test_batched_views_equal_per_view(spot):
    cams = Cameras.sphere(3, distance=2.5, fov_deg=40, width=40, height=40)
    v, f = _tensors(spot)
    rng = np.random.default_rng(5)
    w = torch.tensor(rng.normal(size=(3, 40, 40, 4)))

    def loss(out):
        return (w[..., :3] * out["normal"]).sum() + (w[..., 3] * out["mask"]).sum() + out["depth"].sum()

    # shared vertices, three cameras
    x = v.clone().requires_grad_(True)
    out = render_normals(x, f, cams)
    g_all = torch.autograd.grad(loss(out), x)[0]
    g_sum = torch.zeros_like(v)
    for b in range(3):
        xb = v.clone().requires_grad_(True)
        ob = render_normals(xb, f, cams[b])
        for k in ("normal", "mask", "depth"):
            assert torch.allclose(out[k][b:b + 1], ob[k], atol=1e-12)
        wb = w[b:b + 1]
        lb = (wb[..., :3] * ob["normal"]).sum() + (wb[..., 3] * ob["mask"]).sum() + ob["depth"].sum()
        g_sum += torch.autograd.grad(lb, xb)[0]
    assert torch.allclose(g_all, g_sum, atol=1e-9)

    # one vertex set per view
    deformed = torch.stack([v, v * 1.1, v + torch.tensor([0.05, -0.02, 0.0], dtype=v.dtype)])
    x = deformed.clone().requires_grad_(True)
    out = render_normals(x, f, cams)
    g = torch.autograd.grad(loss(out), x)[0]
    for b in range(3):
        xb = deformed[b].clone().requires_grad_(True)
        ob = render_normals(xb, f, cams[b])
        for k in ("normal", "mask", "depth"):
            assert torch.allclose(out[k][b:b + 1], ob[k], atol=1e-12)
        wb = w[b:b + 1]
        lb = (wb[..., :3] * ob["normal"]).sum() + (wb[..., 3] * ob["mask"]).sum() + ob["depth"].sum()
        assert torch.allclose(g[b], torch.autograd.grad(lb, xb)[0], atol=1e-9)


@pytest.mark.parametrize("visibility", ["zbuffer", "embree"])
def test_packed_meshes_render_as_each_alone(spot, visibility):
    # three meshes packed into one array (the middle one empty), each shown by its own views: the
    # images and the gradients are those of rendering each mesh alone in its views
    cams = Cameras.sphere(4, distance=2.5, fov_deg=40, width=40, height=40)
    v0, f0 = _tensors(spot)
    v1, f1 = _tensors(trimesh.creation.box(extents=(0.8, 0.5, 0.6)))
    view_mesh = torch.tensor([2, 0, 0, 2])
    verts = torch.cat([v0, v1]).requires_grad_(True)
    meshes = ViewMeshes(view_mesh, torch.tensor([0, len(v0), len(v0), len(v0) + len(v1)]),
                        torch.tensor([0, len(f0), len(f0), len(f0) + len(f1)]))
    w = torch.tensor(np.random.default_rng(7).normal(size=(4, 40, 40, 4)))

    def loss(out, views):
        wv = w[views]
        return (wv[..., :3] * out["normal"]).sum() + (wv[..., 3] * out["mask"]).sum() + out["depth"].sum()

    out = render_normals(verts, torch.cat([f0, f1 + len(v0)]), cams, meshes=meshes, visibility=visibility)
    grad = torch.autograd.grad(loss(out, [0, 1, 2, 3]), verts)[0]
    for v, f, views, rows in ((v0, f0, [1, 2], slice(0, len(v0))), (v1, f1, [0, 3], slice(len(v0), None))):
        x = v.clone().requires_grad_(True)
        alone = render_normals(x, f, cams[torch.tensor(views)], visibility=visibility)
        for k in ("normal", "mask", "depth"):
            torch.testing.assert_close(out[k][views], alone[k], atol=1e-12, rtol=0)
        torch.testing.assert_close(grad[rows], torch.autograd.grad(loss(alone, views), x)[0], atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- degenerate triangles
def _square_with_slivers(cams: Cameras, slivers: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A square facing the camera at depth 3 and, with `slivers`, two near-degenerate triangles
    just in front of it, as marching tetrahedra makes them on a fine grid (issue 16, point 8): a
    sliver 12 pixels long and 2e-6 pixel wide along a row of pixel centres (area ~1e-12 of
    |x - camera centre|^2) and a triangle 2e-7 pixel across around one pixel centre. float32."""
    c64 = cams.to(dtype=torch.float64)

    def at(uv: list, depth: float) -> torch.Tensor:
        uv_t = torch.tensor(uv, dtype=torch.float64)[None]
        return c64.unproject(uv_t, torch.full(uv_t.shape[:2], depth, dtype=torch.float64))[0]

    v = at([[4, 4], [28, 4], [28, 28], [4, 28]], 3.0)
    f = [[0, 1, 2], [0, 2, 3]]
    if slivers:
        w, r = 1e-6, 1e-7
        v = torch.cat([v, at([[8.5, 10.5 - w], [20.5, 10.5 - w], [14.5, 10.5 + w]], 2.9),
                       at([[16.5 - r, 20.5 - r], [16.5 + r, 20.5 - r], [16.5, 20.5 + r]], 2.9)])
        f += [[4, 5, 6], [7, 8, 9]]
    return v.float(), torch.tensor(f)


def test_near_degenerate_triangles_give_finite_images_and_gradients():
    """Slivers and sub-pixel triangles (float32, as in a tet fit at the 128 level) claim pixels
    without NaN / inf in the images or the vertex gradients, and leave the rest of the image as it
    is without them. Before the float64 solves and the guarded divisions this failed twice: the
    antialiased mask was NaN (the tiny triangle's edge projected to one float32 point: 0 / 0 in
    the crossing), and the sliver's float32 barycentrics put its hit points pixels off the rays."""
    cams = Cameras.look_at([0.0, 0.0, 3.0], fov_deg=30, width=32, height=32)
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(shape, generator=gen) for k, shape in
               (("normal", (1, 32, 32, 3)), ("mask", (1, 32, 32)), ("depth", (1, 32, 32)))}
    outs, grads = [], []
    for slivers in (False, True):
        v, f = _square_with_slivers(cams, slivers)
        x = v.clone().requires_grad_(True)
        out = render_normals(x, f, cams)
        sum((weights[k] * out[k]).sum() for k in weights).backward()
        outs.append(out)
        grads.append(x.grad)
    plain, degenerate = outs
    for k in ("normal", "mask", "depth"):
        assert torch.isfinite(degenerate[k]).all(), k
    assert torch.isfinite(grads[1]).all()
    frags = degenerate["fragments"]
    claimed = frags.face >= 2  # pixels the slivers cover
    assert (frags.face == 2).sum() >= 3 and (frags.face == 3).sum() == 1  # the test is not vacuous
    # the sliver's barycentrics are accurate: its hit points project to the pixel centres
    hits = interpolate(_square_with_slivers(cams, True)[0], frags)[claimed]
    uv, _ = cams.to(dtype=torch.float64).project(hits.double())
    rows, cols = claimed[0].nonzero().unbind(1)
    centres = torch.stack([cols, rows], 1).double() + 0.5
    assert (uv[0] - centres).abs().max() < 1e-3
    near = torch.nn.functional.max_pool2d(claimed.float()[:, None], 3, 1, 1)[:, 0] > 0
    for k in ("normal", "mask", "depth"):
        assert torch.equal(plain[k][~near], degenerate[k][~near]), k


# --------------------------------------------------------------------------- helpers, edge cases
def test_vertex_and_face_normals():
    mesh = _bumpy_sphere(3)
    v, f = _tensors(mesh)
    fn = face_normals(v, f)
    assert np.allclose(fn.numpy(), mesh.face_normals, atol=1e-9)
    vn = vertex_normals(v, f)
    area = mesh.area_faces[:, None] * mesh.face_normals
    ref = np.zeros_like(mesh.vertices)
    np.add.at(ref, mesh.faces.reshape(-1), np.repeat(area, 3, axis=0))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(vn.numpy(), ref, atol=1e-9)
    batched = vertex_normals(torch.stack([v, 2 * v]), f)
    assert torch.allclose(batched[0], vn) and torch.allclose(batched[1], vn)
    cams = Cameras.sphere(1, distance=2.5, width=24, height=24)
    given = render_normals(v, f, cams, vertex_normals=vn)["normal"]
    assert torch.equal(given, render_normals(v, f, cams)["normal"])
    small = trimesh.creation.icosphere(subdivisions=1)
    radial = np.random.default_rng(0).uniform(0.8, 1.2, (len(small.vertices), 1))
    x = torch.tensor(small.vertices * radial, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: vertex_normals(y, torch.tensor(small.faces)), (x,),
                                    eps=1e-6, atol=1e-6)


def test_empty_views_and_bad_input():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    v, f = _tensors(mesh)
    away = Cameras.look_at([0.0, 0.0, 3.0], target=[0.0, 0.0, 6.0], width=16, height=16)
    x = v.clone().requires_grad_(True)
    out = render_normals(x, f, away)
    assert out["mask"].sum() == 0 and out["normal"].abs().sum() == 0
    (out["mask"].sum() + out["normal"].sum()).backward()
    assert x.grad.abs().sum() == 0
    # a camera inside the mesh sees it everywhere (no crash on vertices behind the camera)
    inside = Cameras.look_at([0.0, 0.0, 0.0], target=[0.0, 0.0, 1.0], width=16, height=16)
    assert render_normals(v, f, inside)["fragments"].mask.all()
    with pytest.raises(ValueError):
        rasterize(v[:, :2], f, away)
    with pytest.raises(ValueError):
        rasterize(v, f + 1000, away)
    with pytest.raises(ValueError):
        rasterize(torch.stack([v, v]), f, away)  # two vertex sets, one camera


def test_large_mesh_smoke():
    """330k faces at 128^2, forward + backward, edge topology built on the way, runs and gives
    sensible images and gradients (its speed is measured by benchmarks/renderers_raster.py)."""
    mesh = trimesh.creation.icosphere(subdivisions=7, radius=0.8)
    assert len(mesh.faces) > 300_000
    v, f = _tensors(mesh, dtype=torch.float32)
    cams = Cameras.sphere(1, distance=3.0, fov_deg=40, width=128, height=128)
    x = v.clone().requires_grad_(True)
    out = render_normals(x, f, cams)
    (out["mask"].sum() + out["normal"].sum()).backward()
    assert out["fragments"].mask.sum() > 0.3 * 128 * 128
    assert (out["mask"] - out["fragments"].mask).abs().sum() > 10  # silhouettes antialiased
    assert x.grad.abs().sum() > 0
