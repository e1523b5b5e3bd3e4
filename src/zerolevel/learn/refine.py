"""A single-view network's prediction refined by the multi-view tet-grid fit on its own input images.

The network predicts in the dataset's normalised world frame (objects in [-0.5, 0.5]^3, the ring
cameras around them); the fit (`recon.tetsdf.TetSDF`) works in a scene's working space (the object
inside the unit sphere, its grid over [-1, 1]^3). The two are tied by one similarity, a scale:

    working = dataset / radius,  radius = the tet network's grid bound (0.55 by default)

so the fit's first grid covers exactly the network's grid, and its lattices (32, 64, ...) nest the
network's 32^3 lattice: the start carries the network's surface over unchanged (`start_from_values`).
SDF values scale with the frame (a distance of d in the dataset frame is d / radius in working
units); normals do not change.

The pieces, each a plain function:
- `ring_cameras`: the dataset's ring cameras of the input views, at the images' size;
- `input_scene`: a `Scene` from the input images (mask = alpha > 127) and optional normal maps;
- `start_from_values` (TetNet: its SDF values, Kuhn-interpolated as marching tetrahedra sees them)
  and `start_from_mesh` (SoftRas: the predicted closed mesh's occupancy on the lattice, by winding
  number, then signed distance by EDT);
- `refine`: the fit for a time budget from that start, the surface back in the dataset frame; from one
  view it also pulls towards the start (`REFINE_ONE_VIEW`: one view leaves the depth free).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..errors import InputError
from ..geometry.occupancy import ray_winding_number
from ..geometry.tetgrid import TetGrid
from ..optim.loop import LoopConfig, LoopResult, run_loop
from ..recon.tetsdf import TetSDF, TetSDFConfig, lattice_sdf
from ..scene import Scene, View, normalize_scene
from .dataset.folder import read_info
from .predict import output_mesh
from .tetnet import TetNet

# The fit's settings for a refine: the network's own lattice (32), one level. On 4 val/test objects of a
# 12-per-category chair/table set, 3 views, 20 s (benchmarks/results/predict_refine_settings.md): from
# masks, voxel IoU 0.18 predicted -> 0.35 at lr 0.1 (the fit's default), 0.31 at 0.05, 0.28 with a 64
# level after the 32 one (its steps are dearer: fewer of them in the budget; a full 64 lattice takes
# ~1 s a step). With these settings (results/predict_refine.md, 8 object-offset pairs), 20 s lift 3 views'
# IoU 0.18 -> 0.44 from masks, 1 view's only 0.17 -> 0.18 (F@2% 0.12 -> 0.27) and 0.27 with normal maps;
# with 3 views the normal term at its fit weight (1) ends lower (0.31; 0.39 at 0.2) than masks alone
# the refined surface keeps its pieces of >= 1% of the largest's area, as the network's prediction keeps
# all (a table's leg predicted apart from its top, a lamp's shade from a pole the fit cuts), where a
# multi-view fit keeps its largest piece; 1% drops the fit's specks (~0.01%, tests/test_predict_refine.py)
REFINE = TetSDFConfig(resolutions=(32,), level_shares=(1.0,), lr=0.1, init="field", min_piece=0.01)
# From one view the depth is free: the fit moved it and lowered IoU (0.38 -> 0.26 on 24 test pairs, 4 per
# category, of a 300 s network, GT normal maps; benchmarks/results/refine_prior.md). A pull towards the
# network's SDF (w_prior) keeps it: IoU 0.40 and F@0.5% 0.054 -> 0.076, up on every category, at half the step.
# A better network (1500 s, IoU 0.60) needs a stronger pull: at w_prior 1 its cars and vases lost F@0.5%
# (results/singleview_tetnet.md's refine row too); at 4, F@0.5% 0.153 -> 0.182 and IoU 0.601 -> 0.619,
# up on every category (16: 0.180, cars level; 14 test pairs, pix2pix normal maps,
# benchmarks/results/refine_prior_strong.md)
REFINE_ONE_VIEW = replace(REFINE, lr=0.05, w_prior=4.0)
PACE_SHARE = 0.1  # the first share of the budget measures the pace; the schedule is then fitted to it
DEFAULT_RADIUS = 0.55  # a SoftRas prediction's frame: TetNet's default grid bound


@dataclass
class Refined:
    """What `refine` returns: the surface in the dataset frame and how the fit ran."""

    mesh: trimesh.Trimesh
    result: LoopResult
    config: TetSDFConfig
    views: int
    modalities: tuple[str, ...]


def ring_cameras(dataset: str | Path, views: Sequence[int], size: int) -> Cameras:
    """The dataset's ring cameras of `views` (indices on its ring), at `size` x `size` pixels (the
    intrinsics follow the field of view, so another image size than the dataset's is a rescale).

    Raises:
        InputError: (naming dataset.json) a view index outside the ring.
    """
    info = read_info(dataset)
    count = int(info["views"])
    bad = [k for k in views if not 0 <= k < count]
    if bad:
        raise InputError(f"view {bad[0]} is not on the dataset's ring of {count} cameras (0 to {count - 1})",
                         Path(dataset) / "dataset.json")
    ring = Cameras.ring(n_views=count, elevation_deg=float(info["elevation"]), distance=float(info["distance"]),
                        fov_deg=float(info["fov"]), width=size, height=size)
    return ring[torch.as_tensor(list(views), dtype=torch.long)]


def input_scene(images: Sequence[np.ndarray], cameras: Cameras, normals: Sequence[np.ndarray] | None = None,
                radius: float = DEFAULT_RADIUS) -> Scene:
    """The scene a refine fits, in working space (the dataset frame / `radius`).

    Args:
        images: K (H, W, 4) uint8 RGBA: the masks are alpha > 127.
        cameras: K cameras in the dataset frame, of the images' size.
        normals: K (H, W, 3) world-space normal maps (the dataset frame's axes; background 0), or None.
        radius: the scale from working space to the dataset frame.
    Returns:
        Scene with masks (and normal maps, zeroed outside the masks), `to_world` = the scale.
    """
    K = cameras.K.double().cpu().numpy()
    W2C = cameras.world_to_camera.double().cpu().numpy()
    views = []
    for k, image in enumerate(images):
        mask = np.asarray(image)[..., 3] > 127
        normal = None
        if normals is not None:
            normal = np.where(mask[..., None], np.asarray(normals[k], dtype=np.float32), 0).astype(np.float32)
        views.append(View(f"{k:03d}", K[k], W2C[k], cameras.width, cameras.height, mask=mask, normal=normal))
    return normalize_scene(Scene(views, np.eye(4)), np.zeros(3), radius)


def start_from_values(values: torch.Tensor, grid: TetGrid, radius: float) -> Callable[[TetGrid], torch.Tensor]:
    """The fit's start from SDF values on a network's grid (dataset frame).

    Args:
        values: (N,) SDF values at `grid`'s vertices, in the dataset frame's units.
        grid: the network's grid (e.g. `TetNet.grid`, over [-0.55, 0.55]^3).
        radius: working space = dataset frame / radius.
    Returns:
        A call from the fit's grid (working space) to its (N',) values in working units: the
        network's piecewise-linear function (Kuhn's interpolation, exactly what marching tetrahedra
        meshes), so on a lattice that nests the network's the surface is the same; past the
        network's box, its boundary value plus the distance to the box.
    """
    values = values.detach().double().cpu()
    lo, hi = grid.bounds
    inner = (hi - lo) * 1e-9  # keep clamped points inside the box despite rounding

    def start(fit_grid: TetGrid) -> torch.Tensor:
        points = fit_grid.vertices.detach().double().cpu() * radius
        clamped = points.clamp(lo + inner, hi - inner)
        beyond = (points - clamped).norm(dim=1)
        inside = grid.evaluate(clamped, values.to(grid.device)).cpu()
        return ((inside + beyond) / radius).float().to(fit_grid.device)

    return start


def start_from_mesh(mesh: trimesh.Trimesh, radius: float) -> Callable[[TetGrid], torch.Tensor]:
    """The fit's start from a closed mesh in the dataset frame (a SoftRas prediction): occupancy of
    the fit's lattice vertices (winding number > 1/2, so self-intersections count as inside), then
    signed distance by EDT, in working units."""

    def start(fit_grid: TetGrid) -> torch.Tensor:
        points = fit_grid.vertices.detach().double().cpu().numpy() * radius
        inside = torch.from_numpy(ray_winding_number(mesh, points) > 0.5)
        if not bool(inside.any()):
            raise InputError("the network's mesh encloses no vertex of the fit's grid: nothing to refine")
        return lattice_sdf(fit_grid, inside)

    return start


def refine(net: torch.nn.Module, output: torch.Tensor, scene: Scene, seconds: float,
           config: TetSDFConfig | None = None, device: str | torch.device = "cpu", seed: int = 0,
           progress: bool = True, source: str = "images", iters: int | None = None) -> Refined:
    """Continue from a network's (fused) output with the tet-grid fit of `scene` for `seconds`.

    Args:
        net: the network (TetNet or SoftRasNet) whose raw output `output` is: (N,) SDF values on
            `net.grid` or (V, 3) vertices, in the dataset frame.
        output: the prediction to start from.
        scene: `input_scene` of the input images (its `to_world` is the working-space scale).
        seconds: the fit's time budget (the loop's own time; the set-up and the extraction add a
            little).
        config: the fit's settings (default `REFINE`, `REFINE_ONE_VIEW` for a scene of one view);
            `init` is set to "field".
        iters: a fixed number of iterations (the budget still stops it), for repeatable runs;
            None: as many as the budget allows, the schedule fitted to the pace of the first steps.
    Returns:
        Refined: the largest component of the fitted surface in the dataset frame, the loop's result.
    Raises:
        InputError: an empty start. optim.loop.DivergedError: the fit diverged.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    config = replace(config or (REFINE_ONE_VIEW if len(scene.views) == 1 else REFINE), init="field")
    radius = float(np.asarray(scene.to_world)[0, 0])
    if isinstance(net, TetNet):
        start = start_from_values(output, net.grid, radius)
    else:
        start = start_from_mesh(output_mesh(net, output), radius)
    fit = TetSDF(scene, 1_000_000, config, device=device, seed=seed, source=source, start=start)
    result = fit_within(fit, seconds, iters, progress)
    mesh = fit.extract()
    return Refined(mesh, result, config, len(scene.views), tuple(sorted(scene.modalities() & {"normal", "mask"})))


def fit_within(fit: TetSDF, seconds: float, iters: int | None = None, progress: bool = True,
               desc: str = "refining") -> LoopResult:
    """Run a tet fit for `seconds` of its loop: `iters` steps (the budget still stops it) or, with None,
    as many as the budget allows, the schedule's length set by the pace of its first `PACE_SHARE` (so
    that the cosine decay and any finer level fit the budget; the budget counts both runs)."""
    quiet = dict(checkpoint_every=1 << 30, checkpoint_every_s=math.inf, log_every=1 << 30)
    with tempfile.TemporaryDirectory(prefix="zerolevel-fit-") as folder:
        if iters is None:
            probe = run_loop(fit, folder, LoopConfig(iters=1 << 30, budget_s=PACE_SHARE * seconds, progress=False,
                                                     **quiet), name=TetSDF.name)
            iters = max(probe.iterations + 1, round(probe.iterations * seconds / max(probe.seconds, 1e-6)))
        fit.reschedule(iters)
        return run_loop(fit, folder, LoopConfig(iters=iters, budget_s=seconds, progress=progress, desc=desc, **quiet),
                        resume=True, name=TetSDF.name)
