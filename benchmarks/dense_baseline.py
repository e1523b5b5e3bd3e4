"""The baseline of `fit_speed.py`: a plain dense-grid SDF fitter in ~200 lines of PyTorch, written
from issue 20's description, to measure the project's default fit against.

A dense grid over [-1, 1]^3 (32^3 -> 64^3 -> 128^3, each level a fixed share of the time budget),
started as a sphere. Per iteration, 12288 random pixels of all views: sphere tracing without
gradients; at the hits, a finite-difference (6-tap, one voxel) normal compared with the input normal
(L1); on every ray, a soft silhouette sigmoid(-k * min SDF along the ray) compared with the mask
(BCE); over the grid, eikonal + Laplacian. Adam. The mesh: marching cubes of the grid upsampled to
256^3. Nothing else (no visual hull, no implicit differentiation of the hit, no re-distancing).

    python benchmarks/dense_baseline.py SCENE --budget 30 -o mesh.ply [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from skimage.measure import marching_cubes

from zerolevel.importers import load_scene

LEVELS = ((32, 0.15), (64, 0.35), (128, 0.50))  # (grid nodes per axis, share of the budget)
RAYS = 12288
LR_VOXELS = 0.3  # Adam step in voxels of the current level
W_NORMAL, W_MASK, W_EIKONAL, W_LAPLACIAN = 0.3, 0.5, 0.1, 0.02
MARCH_STEPS = 40


def sample(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear SDF at (N, 3) points in [-1, 1]^3; grid indexed [ix, iy, iz]."""
    coords = points[:, [2, 1, 0]].reshape(1, -1, 1, 1, 3)  # grid_sample wants (x -> W, y -> H, z -> D)
    return F.grid_sample(grid[None, None], coords, align_corners=True, padding_mode="border").reshape(-1)


def fd_normals(grid: torch.Tensor, points: torch.Tensor, h: float) -> torch.Tensor:
    offsets = torch.eye(3, dtype=points.dtype) * h
    taps = torch.cat([points + offsets[i] for i in range(3)] + [points - offsets[i] for i in range(3)])
    values = sample(grid, taps).reshape(6, -1)
    gradient = torch.stack([values[i] - values[i + 3] for i in range(3)], -1) / (2 * h)
    return F.normalize(gradient, dim=-1)


def sphere_interval(origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - 1.0
    disc = (b * b - c).clamp_min(0).sqrt()
    return (-b - disc).clamp_min(0), -b + disc


@torch.no_grad()
def trace(grid: torch.Tensor, origins, directions, near, far):
    """March t <- t + f (active rays only); the hit flag, and the t of the smallest value seen on
    each ray (where the soft silhouette is evaluated)."""
    t, t_min = near.clone(), near.clone()
    f_min = torch.full_like(near, float("inf"))
    hit = torch.zeros_like(near, dtype=torch.bool)
    active = torch.arange(len(near))
    for _ in range(MARCH_STEPS):
        value = sample(grid, origins[active] + t[active, None] * directions[active])
        lower = value < f_min[active]
        f_min[active[lower]], t_min[active[lower]] = value[lower], t[active[lower]]
        done = value.abs() < 2e-3
        hit[active[done]] = True
        t[active] = torch.minimum(t[active] + value, far[active])
        keep = ~done & (t[active] < far[active])
        active = active[keep]
        if len(active) == 0:
            break
    # a hit ray's minimum lies inside the object: probe behind the hit (else the silhouette term
    # would push every hit outwards)
    h = hit.nonzero()[:, 0]
    depths = t[h, None] + torch.tensor([0.02, 0.05, 0.1, 0.2])
    inside = sample(grid, (origins[h, None] + depths[..., None] * directions[h, None]).reshape(-1, 3))
    t_min[h] = depths.gather(1, inside.reshape(len(h), -1).argmin(1, keepdim=True))[:, 0]
    return t, hit, t_min


def regularisers(v: torch.Tensor, voxel: float, nodes: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Eikonal (forward differences: central ones do not see an odd-even checkerboard) and Laplacian
    at `nodes` random interior nodes."""
    r = v.shape[0]
    i, j, k = (torch.randint(1, r - 1, (nodes,)) for _ in range(3))
    flat, centre = v.reshape(-1), (i * r + j) * r + k
    step = (r * r, r, 1)
    plus = [flat[centre + s] for s in step]
    minus = [flat[centre - s] for s in step]
    gradient2 = sum(((p - flat[centre]) / voxel) ** 2 for p in plus)
    lap = (sum(plus) + sum(minus) - 6 * flat[centre]) / voxel
    return ((gradient2 - 1) ** 2).mean(), (lap ** 2).mean()


def sphere_grid(resolution: int, radius: float = 0.6) -> torch.Tensor:
    axis = torch.linspace(-1, 1, resolution)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    return (x ** 2 + y ** 2 + z ** 2).sqrt() - radius


def fit(scene, budget_s: float, seed: int = 0) -> torch.Tensor:
    """The fitted grid after `budget_s` seconds of optimisation."""
    torch.manual_seed(seed)
    cameras = scene.cameras()
    normals = torch.as_tensor(scene.stack("normal")).float()
    masks = torch.as_tensor(scene.stack("mask")).float() if "mask" in scene.modalities() else \
        (normals.norm(dim=-1) > 0.5).float()
    views, height, width = masks.shape
    grid = sphere_grid(LEVELS[0][0])
    start = time.perf_counter()
    boundary = 0.0
    for resolution, share in LEVELS:
        boundary += share * budget_s
        grid = F.interpolate(grid.detach()[None, None], size=(resolution,) * 3, mode="trilinear",
                             align_corners=True)[0, 0].requires_grad_(True)
        voxel = 2.0 / (resolution - 1)
        optimizer = torch.optim.Adam([grid], lr=LR_VOXELS * voxel)
        while time.perf_counter() - start < boundary:
            view = torch.randint(0, views, (RAYS,))
            row, col = torch.randint(0, height, (RAYS,)), torch.randint(0, width, (RAYS,))
            uv = torch.stack([col, row], -1).float() + 0.5
            origins, directions = cameras[view].rays(uv[:, None, :])
            origins, directions = origins[:, 0], directions[:, 0]
            near, far = sphere_interval(origins, directions)
            t, hit, t_min = trace(grid.detach(), origins, directions, near, far)
            target_mask = masks[view, row, col]
            both = hit & (target_mask > 0.5)
            points = (origins + t[:, None] * directions)[both]
            normal_loss = (fd_normals(grid, points, voxel) - normals[view, row, col][both]).abs().sum(-1).mean() \
                if len(points) else grid.sum() * 0
            f_min = sample(grid, origins + t_min[:, None] * directions)
            soft = torch.sigmoid(-1.5 * resolution * f_min).clamp(1e-5, 1 - 1e-5)
            mask_loss = F.binary_cross_entropy(soft, target_mask)
            eikonal, laplacian = regularisers(grid, voxel)
            loss = W_NORMAL * normal_loss + W_MASK * mask_loss + W_EIKONAL * eikonal + W_LAPLACIAN * laplacian
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return grid.detach()


def mesh_of(grid: torch.Tensor, to_world: np.ndarray, resolution: int = 256) -> trimesh.Trimesh:
    fine = F.interpolate(grid[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    vertices, faces, _, _ = marching_cubes(fine.numpy(), 0.0, spacing=(2.0 / (resolution - 1),) * 3,
                                           gradient_direction="ascent")  # outward: SDF negative inside
    mesh = trimesh.Trimesh(vertices - 1.0, faces)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        mesh = max(pieces, key=lambda m: len(m.faces))
    mesh.apply_transform(to_world)
    return mesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene")
    parser.add_argument("--budget", type=float, required=True, help="optimisation seconds")
    parser.add_argument("-o", "--output", required=True, help="mesh file to write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scene = load_scene(args.scene)
    mesh = mesh_of(fit(scene, args.budget, args.seed), scene.to_world)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    mesh.export(args.output)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
