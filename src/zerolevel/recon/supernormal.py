"""SuperNormal (Cao & Taketomi 2024): a hash-grid neural SDF fitted to multi-view normal maps and masks.

The wiring of the method, nothing else: a `HashGridSDF` (SuperNormal's encoding, one hidden layer),
NeuS volume rendering of k x k pixel patches sampled over whole images with directional finite
differences (`render.volume`), and the losses

    normal L2 (un-normalised rendered normal vs input, over masked pixels)
    + w_mask * BCE(accumulated opacity, mask) + w_eikonal * mean((|grad f| - 1)^2),

with a linear warm-up then cosine learning-rate decay, coarse-to-fine activation of hash levels and
more samples per ray as training goes on (SuperNormal shrinks its marching step). The optimisation
loop itself (progress, budget, checkpoints) is `optim.loop`. Scenes with only masks or only normals
fit with the terms they have.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import trimesh

from .. import losses as L
from ..fields.hashgrid import HashGridEncoding, HashGridSDF
from ..geometry.narrowband import marching_cubes_narrow_band
from ..geometry.visual_hull import visual_hull_cells
from ..render.occupancy import OccupancyGrid, update_occupancy
from ..render.volume import NeuSVariance, volume_render_patches
from ..scene import Scene
from .base import scene_targets


@dataclass
class SuperNormalConfig:
    """Settings; defaults follow SuperNormal's released DiLiGenT-MV config where it has one."""

    patch_size: int = 3                 # SuperNormal: 3 x 3 patches
    patches_per_iter: int = 1024        # SuperNormal: 2048. Fixed costs per step favour big steps: rocker
                                        # arm F@0.5% 0.962 with 1024 x 300 it., 0.943 with 256 x 800 in more
                                        # time (benchmarks/results/ablations.md, supernormal_patches)
    views_per_iter: int = 8             # views the patches of one iteration are drawn from
    samples_start: int = 32             # samples per ray at the start ...
    samples_end: int = 64               # ... and at the end (SuperNormal shrinks its step 1e-2 -> 1e-3)
    lr_table: float = 3e-2              # hash table (1e-2: Instant-NGP / NeuS2; 3e-2: F@0.5% 0.999 vs 0.987,
    lr_network: float = 1e-2            # ablations.md supernormal_lr)
    lr_variance: float = 1e-3           # NeuS variance (5e-3 lets it soften: ablations.md supernormal_variance)
    warmup: int = 20                    # iterations of linear warm-up, then cosine decay
    lr_floor: float = 0.05              # final learning rate as a fraction of the initial one
    w_mask: float = 0.5                 # mask BCE weight
    w_eikonal: float = 0.1              # eikonal weight (NeuS: 0.1)
    variance_init: float = 0.5          # SuperNormal's NeuS variance init (inv_s = e^5)
    levels_start: int = 4               # hash levels active at the start (coarse to fine) ...
    levels_every: int = 10              # ... one more every this many iterations (40 is worse at 300 it.:
                                        # ablations.md supernormal_levels) ...
    levels_end: int = 14                # ... up to this many (SuperNormal: all 14)
    init_radius: float = 0.6            # the SDF starts as a sphere of this radius
    gradient: str = "dfd"               # SDF gradients: "dfd" (SuperNormal), "analytic" or "fd"
    weight_norm: bool = True            # weight-normalised MLP layers (SuperNormal; ablations.md
                                        # supernormal_weight_norm: F@0.5% 0.88 vs 0.83 at 200 it.)
    occupancy_resolution: int = 64      # empty-space skipping grid (SuperNormal: nerfacc's); 0: sample densely
    occupancy_every: int = 8            # iterations between refreshes of the grid


class SuperNormal:
    """The method object that `optim.loop.run_loop` drives (step / state_dict / load_state_dict)."""

    def __init__(self, scene: Scene, iters: int, config: SuperNormalConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, source: str = "scene"):
        self.config = config or SuperNormalConfig()
        self.iters = max(1, iters)
        self.device = torch.device(device)
        self.scene = scene
        targets = scene_targets(scene, self.device, ("normal", "mask"), mask_from_normals=False, source=source)
        self.cameras = scene.cameras(device=self.device)
        self.normals, self.masks = targets.get("normal"), targets.get("mask")
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        self.field = HashGridSDF(radius=self.config.init_radius, n_hidden_layers=1,
                                 encoding=HashGridEncoding.supernormal(),
                                 weight_norm=self.config.weight_norm).to(self.device)
        self.variance = NeuSVariance(self.config.variance_init).to(self.device)
        self.optimizer = torch.optim.Adam([
            {"params": [self.field.encoding.table], "lr": self.config.lr_table},
            {"params": list(self.field.layers.parameters()), "lr": self.config.lr_network},
            {"params": list(self.variance.parameters()), "lr": self.config.lr_variance}],
            betas=(0.9, 0.99), eps=1e-15, fused=True)  # fused: one pass over the 15M-entry table
        # (`foreach` makes several, which cost about as much as the rest of a step on 2 cores)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.step_scale = 1.0  # scaled down by the loop when it recovers from a non-finite loss
        self.occupancy, self.hull = self._occupancy_grids()

    # ------------------------------------------------------------------ schedule
    def learning_rate_factor(self, iteration: int) -> float:
        """Linear warm-up, then cosine decay to `lr_floor`."""
        c = self.config
        if iteration < c.warmup:
            return (iteration + 1) / c.warmup
        progress = min(1.0, (iteration - c.warmup) / max(1, self.iters - c.warmup))
        return c.lr_floor + (1 - c.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def samples_per_ray(self, iteration: int) -> int:
        c = self.config
        return int(round(c.samples_start + (c.samples_end - c.samples_start) * iteration / self.iters))

    # ------------------------------------------------------------------ one step
    def step(self, iteration: int) -> dict[str, float]:
        c = self.config
        self.field.set_active_levels(min(c.levels_end, c.levels_start + iteration // c.levels_every))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.step_scale * self.learning_rate_factor(iteration)
        if self.occupancy is not None and iteration % c.occupancy_every == 0:
            update_occupancy(self.field, self.occupancy, variance=self.variance, grow_into=self.hull)
        views, top_left = self._sample_patches()
        out = volume_render_patches(self.field, self.cameras[views], top_left, c.patch_size,
                                    variance=self.variance, n_samples=self.samples_per_ray(iteration),
                                    gradient=c.gradient, generator=self.generator, occupancy=self.occupancy)
        losses = self._losses(out, views, top_left)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        report = {name: value.item() for name, value in losses.items()}
        report["inv_s"] = self.variance().item()
        return report

    def _occupancy_grids(self) -> tuple[OccupancyGrid | None, torch.Tensor | None]:
        """The empty-space skipping grid (refreshed from the field every `occupancy_every` steps)
        and, when the scene has masks, the visual hull's cells, which stay sampled wherever the
        field is still outside so that the surface can grow into them."""
        r = self.config.occupancy_resolution
        if r <= 0:
            return None, None
        hull = visual_hull_cells(self.cameras, self.masks, r) if self.masks is not None else None
        return OccupancyGrid.full(r, device=self.device), hull

    def _sample_patches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Random views and, per view, random k x k patches anywhere in the image."""
        c, cams = self.config, self.cameras
        n_views = min(c.views_per_iter, len(cams))
        views = torch.randperm(len(cams), generator=self.generator)[:n_views]
        per_view = max(1, c.patches_per_iter // n_views)
        cols = torch.randint(0, cams.width - c.patch_size + 1, (n_views, per_view), generator=self.generator)
        rows = torch.randint(0, cams.height - c.patch_size + 1, (n_views, per_view), generator=self.generator)
        return views.to(self.device), torch.stack([cols, rows], dim=-1).to(self.device)

    def _gather(self, images: torch.Tensor, views: torch.Tensor, top_left: torch.Tensor) -> torch.Tensor:
        """Pixels of (V, H, W, ...) images under the patches: (B, N, k, k, ...)."""
        k = self.config.patch_size
        offsets = torch.arange(k, device=self.device)
        rows = top_left[..., 1, None, None] + offsets[:, None]          # (B, N, k, 1)
        cols = top_left[..., 0, None, None] + offsets[None, :]          # (B, N, 1, k)
        return images[views[:, None, None, None], rows, cols]

    def _losses(self, out: dict, views: torch.Tensor, top_left: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        losses = {}
        mask = self._gather(self.masks, views, top_left) if self.masks is not None else None
        if self.normals is not None:
            target = self._gather(self.normals, views, top_left)
            inside = mask > 0.5 if mask is not None else target.norm(dim=-1) > 0.5
            losses["normal"] = L.normal_l2(out["normal"], target, inside)
        if mask is not None:
            losses["mask"] = c.w_mask * L.mask_bce(out["opacity"], mask)
        losses["eikonal"] = c.w_eikonal * L.eikonal_residual_loss(out["eikonal"])
        return losses

    def reduce_step(self, factor: float) -> None:
        """Scale every learning rate by `factor` from now on (recovery from a non-finite loss)."""
        self.step_scale *= factor

    # ------------------------------------------------------------------ results
    def extract(self, resolution: int = 256, progress: bool = False) -> trimesh.Trimesh:
        """The zero level set as a mesh in the input's units (narrow band, largest component)."""
        self.field.set_active_levels(self.config.levels_end)
        mesh = marching_cubes_narrow_band(self.field, resolution, device=self.device,
                                          keep_largest_component=True, to_world=self.scene.to_world,
                                          progress=progress)
        if len(mesh.faces) == 0:
            raise RuntimeError("the fitted field has no zero level set inside the unit sphere")
        return mesh

    def state_dict(self) -> dict[str, Any]:
        return {"method": "supernormal", "config": asdict(self.config),
                "to_world": np.asarray(self.scene.to_world).tolist(),
                "field": self.field.state_dict(), "variance": self.variance.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "active_levels": self.field.active_levels, "step_scale": self.step_scale,
                "occupied": None if self.occupancy is None else self.occupancy.occupied.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.field.load_state_dict(state["field"])
        self.variance.load_state_dict(state["variance"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.field.set_active_levels(state["active_levels"])
        self.step_scale = float(state["step_scale"])
        if self.occupancy is not None and state.get("occupied") is not None:
            self.occupancy.occupied = state["occupied"].to(self.device)


def field_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> tuple[HashGridSDF, np.ndarray]:
    """The fitted field and the scene's `to_world` from a SuperNormal state (a checkpoint's "method")."""
    config = SuperNormalConfig(**state["config"])
    field = HashGridSDF(radius=config.init_radius, n_hidden_layers=1, encoding=HashGridEncoding.supernormal(),
                        refit_sphere=False, weight_norm=config.weight_norm).to(device)
    field.load_state_dict(state["field"])
    field.set_active_levels(config.levels_end)
    return field, np.asarray(state["to_world"], dtype=np.float64)


def mesh_from_state(state: dict[str, Any], resolution: int = 256, device: str | torch.device = "cpu",
                    progress: bool = False) -> trimesh.Trimesh:
    """The fitted surface of a SuperNormal state in the input's units: narrow-band marching cubes at
    `resolution`, largest component."""
    field, to_world = field_from_state(state, device)
    return marching_cubes_narrow_band(field, resolution, device=device, keep_largest_component=True,
                                      to_world=to_world, progress=progress)
