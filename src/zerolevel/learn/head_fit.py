"""The per-image fit baseline of the head evaluation: the tet-grid fit (`recon.tetsdf`, Wu et al.'s
multi-view method) of one photograph's mask and normal map, in the dataset's known camera.

One job: `fit_head` and `fit_predictions`, the baseline a single-view head network is read against
beside the mean head (`phorhum_eval`). From one view the depth is free (the mask and normals fix the
silhouette and the surface's slopes, not its distance or its back), so the fit starts from the
model's mean head (`heads.mean_head_sdf`, the head network's own prior) and is pulled towards it
where the view says nothing (`TetSDFConfig.w_prior`, as `learn.refine` refines one view). The normal
map is the dataset's ground truth (an upper bound for normals a photograph would give); the albedo,
which a geometric fit does not estimate, is the training heads' mean, as the mean head's.

Frames: the fit's working space is head units / `radius` (the grid's [-1, 1]^3 spans +-`radius`
head units, enough for a head of diagonal 1 centred on its box).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..geometry.tetgrid import TetGrid
from ..recon.tetsdf import TetSDF, TetSDFConfig
from .dataset.heads import HeadSplit
from .heads import SDFLattice, lattice_distance, mean_head_sdf
from .phorhum_eval import HeadPrediction, mean_albedo, photograph
from .refine import fit_within, input_scene

RADIUS = 0.6  # head units spanned by the fit's unit working box
# One view, from the mean head: a coarse level, then a finer one in the band (a head's features are a
# few mm: F@1% of the diagonal is ~5 mm, a 64 lattice over +-0.6 a 9 mm cell); the pull towards the
# start as `learn.refine.REFINE_ONE_VIEW`'s
HEAD_FIT = TetSDFConfig(resolutions=(32, 64), level_shares=(0.4, 0.6), lr=0.05, init="field", w_prior=4.0)


def start_from_lattice(lattice: SDFLattice, radius: float = RADIUS) -> Callable[[TetGrid], torch.Tensor]:
    """The fit's start from a signed-distance lattice in head units: its trilinear value (plus the
    distance to its box outside it) at the fit grid's vertices, in working units."""
    values = torch.from_numpy(lattice.values)
    box = torch.from_numpy(np.stack([lattice.lo, lattice.hi])).float()

    def start(grid: TetGrid) -> torch.Tensor:
        points = grid.vertices.detach().float().cpu() * radius
        return (lattice_distance(values, box, points) / radius).to(grid.device)

    return start


def fit_head(image: np.ndarray, normals: np.ndarray, camera: Cameras, seconds: float,
             config: TetSDFConfig = HEAD_FIT, seed: int = 0, progress: bool = False) -> trimesh.Trimesh:
    """The surface (trimesh, head units) fitted to one photograph: `image` (S, S, 4) uint8 (the mask as
    alpha), its world-space normal map `normals` (S, S, 3) in [-1, 1] (0 off the head) and its camera,
    for `seconds` of the fit's loop (the schedule sized by the pace of the first tenth)."""
    scene = input_scene([image], camera, [normals], radius=RADIUS)
    fit = TetSDF(scene, 1_000_000, replace(config, init="field"), seed=seed, source="photograph",
                 start=start_from_lattice(mean_head_sdf()))
    fit_within(fit, seconds, progress=progress, desc="fitting")
    return fit.extract()


def fit_predictions(split: HeadSplit, indices: list[int], train: HeadSplit, seconds: float,
                    config: TetSDFConfig = HEAD_FIT) -> list[HeadPrediction]:
    """The baseline's predictions: each head's first photograph fitted for `seconds`, with the training
    heads' mean surface albedo everywhere."""
    colour = mean_albedo(train)
    out = []
    for index in indices:
        image, camera = photograph(split, index)
        normals = np.asarray(split.normals[index, 0], dtype=np.float32) / 127.0
        mesh = fit_head(image, normals, camera, seconds, config)
        out.append(HeadPrediction.uniform(mesh, colour))
    return out
