"""Slow, obviously-correct dense references of the Soft Rasterizer (`zerolevel.render.softras`):
every pixel against every face, for the tests (and the benchmark) to compare the fast renderer with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zerolevel.cameras import Cameras
from zerolevel.render.softras import DIST_EPS, EPS_BACKGROUND, FAR, GAMMA, NEAR, SIGMA_COLOUR, SIGMA_SILHOUETTE
from zerolevel.render.softras_scene import broadcast


def reference_project(vertices: Tensor, faces: Tensor,
                       cameras: Cameras) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense-reference helper: face corners in NDC (B, F, 3, 2), camera z (B, F, 3), pixel centres
    in NDC (H * W, 2), and whether each face faces the camera (B, F) by its 3D normal."""
    vertices, cameras = broadcast(vertices, cameras)
    faces = faces.to(device=vertices.device, dtype=torch.long)
    uv, z = cameras.project(vertices)
    W = cameras.width
    centre = torch.tensor([W / 2, cameras.height / 2], dtype=uv.dtype, device=uv.device)
    pixels = cameras.pixel_centers().reshape(-1, 2)
    cam = vertices @ cameras.R.transpose(1, 2) + cameras.t[:, None, :]
    a, b, c = cam[:, faces].unbind(2)  # (B, F, 3) camera-space corners
    front = (torch.linalg.cross(b - a, c - a) * (a + b + c)).sum(-1) < 0
    return (uv - centre)[:, faces] * (2.0 / W), z[:, faces], (pixels - centre) * (2.0 / W), front


def reference_face(tri: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed squared distance (B, P) (NDC^2, + inside), barycentrics (B, P, 3) of pixels p (P, 2)
    for one triangle per batch entry, tri (B, 3, 2), by solving the 2x2 system; and (B,) whether the
    triangle has an area."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    M = torch.stack([b - a, c - a], -1)  # (B, 2, 2): columns b - a, c - a
    rhs = (p[None] - a[:, None]).transpose(1, 2)  # (B, 2, P)
    det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]
    ok = det.abs() > 1e-14
    eye = torch.eye(2, dtype=M.dtype, device=M.device)
    sol = torch.linalg.solve(torch.where(ok[:, None, None], M, eye), rhs)
    l1, l2 = sol[:, 0], sol[:, 1]
    bary = torch.stack([1 - l1 - l2, l1, l2], -1)
    inside = (bary > 0).all(-1) & ok[:, None]
    dists = []
    for s, t in ((a, b), (b, c), (c, a)):
        seg = t - s
        length2 = (seg * seg).sum(-1).clamp_min(1e-30)
        u = ((p[None] - s[:, None]) * seg[:, None]).sum(-1) / length2[:, None]
        closest = s[:, None] + u.clamp(0, 1)[..., None] * seg[:, None]
        dists.append(((p[None] - closest) ** 2).sum(-1))
    d2 = torch.stack(dists).amin(0)
    return torch.where(inside, d2, -d2), bary, ok


def reference_soft_silhouette(vertices: Tensor, faces: Tensor, cameras: Cameras, *,
                               sigma: float = SIGMA_SILHOUETTE, dist_eps: float = DIST_EPS) -> Tensor:
    """Slow dense reference of `soft_silhouette`: every pixel against every face, product of (1 - D)."""
    tri, z, p, _ = reference_project(vertices, faces, cameras)
    cut = sigma * math.log(1 / dist_eps - 1)
    free = torch.ones(tri.shape[0], p.shape[0], dtype=tri.dtype, device=tri.device)
    for j in range(tri.shape[1]):
        signed, _, _ = reference_face(tri[:, j], p)
        D = torch.sigmoid(signed / sigma)
        valid = (z[:, j] > 0).all(-1)[:, None] & ((signed > 0) | (-signed < cut))
        free = free * torch.where(valid, 1 - D, torch.ones_like(D))
    return (1 - free).reshape(-1, cameras.height, cameras.width)


def reference_soft_render(vertices: Tensor, faces: Tensor, cameras: Cameras,
                           attributes: Tensor | None = None, *, face_attributes: Tensor | None = None,
                           sigma: float = SIGMA_COLOUR, gamma: float = GAMMA,
                           eps: float = EPS_BACKGROUND, near: float = NEAR, far: float = FAR,
                           background: float | Tensor = 0.0, double_sided: bool = True,
                           perspective_correct: bool = True, dist_eps: float = DIST_EPS) -> dict:
    """Slow dense reference of `soft_render`: a softmax over [background, every face] per pixel."""
    tri, z, p, front = reference_project(vertices, faces, cameras)
    B, nF = tri.shape[:2]
    faces = faces.to(device=tri.device, dtype=torch.long)
    if face_attributes is not None:
        fa = face_attributes if face_attributes.dim() == 3 else face_attributes[None]
        corner = fa.to(tri.dtype).expand(B, -1, -1)[:, :, None, :].expand(-1, -1, 3, -1)
    else:
        ones = torch.ones(1, int(faces.max()) + 1, 3, device=tri.device)
        va = ones if attributes is None else attributes
        va = va if va.dim() == 3 else va[None]
        corner = va.to(tri.dtype).expand(B, -1, -1)[:, faces]
    cut = sigma * math.log(1 / dist_eps - 1)
    logits, colours = [], []
    free = torch.ones(B, p.shape[0], dtype=tri.dtype, device=tri.device)
    for j in range(nF):
        signed, bary, area = reference_face(tri[:, j], p)
        D = torch.sigmoid(signed / sigma)
        valid = (z[:, j] > 0).all(-1)[:, None] & ((signed > 0) | (-signed < cut))
        free = free * torch.where(valid, 1 - D, torch.ones_like(D))
        w = bary.clamp(0, 1)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-5)
        depth = 1 / (w / z[:, j, None, :]).sum(-1)
        zn = (far - depth) / (far - near)
        ok = valid & area[:, None] & (depth >= near) & (depth <= far)
        ok = ok & (front[:, j, None] | double_sided)
        logit = F.logsigmoid(signed / sigma) + zn / gamma
        logits.append(torch.where(ok, logit, torch.full_like(D, -math.inf)))
        pw = w / z[:, j, None, :] * depth[..., None] if perspective_correct else w
        colours.append(torch.einsum("bpk,bkc->bpc", pw, corner[:, j]))
    all_logits = torch.cat([torch.full((B, p.shape[0], 1), eps / gamma, dtype=tri.dtype,
                                       device=tri.device),
                            torch.stack(logits, -1)], -1)
    weight = torch.softmax(all_logits, -1)  # (B, P, 1 + F)
    bg = torch.as_tensor(background, dtype=tri.dtype, device=tri.device).expand(colours[0].shape[-1])
    all_colours = torch.cat([bg.expand(B, p.shape[0], 1, -1), torch.stack(colours, 2)], 2)
    image = (weight[..., None] * all_colours).sum(2)
    H, W = cameras.height, cameras.width
    return {"image": image.reshape(B, H, W, -1), "alpha": (1 - free).reshape(B, H, W)}
