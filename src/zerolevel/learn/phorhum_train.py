"""Training of PHORHUM's head network (`phorhum.PhorhumNet`) on a head dataset (`dataset.heads`).

One job: the losses of a batch and the settings of the training; the step skeleton, decay, resume,
distribution and run folder are every network's (`learn.training`, `optim.loop`).

A step: every sample of the global batch is a head and one of its photographs (`PairSampler`; the
second view is unused). The network reads the photograph (RGB and mask) and is asked, through that
photograph's camera, at `surface_points` points of the head's set O and `label_points` of its set F
(a fresh random subset of each every step). The thesis's losses (section 5.6), weights in the config:

    L_g  (surface)  mean over O of w_g1 |d| + w_g2 |grad d / |grad d| - n|; w_g1 rises linearly from
                    `w_g1_start` to `w_g1_end` over the first `w_g1_ramp` iterations (the thesis: over training)
    L_l  (label)    mean over F of BCE(inside, sigmoid(-k d)), k learnt (the network's `log_sharpness`)
    L_e  (eikonal)  mean over F of (|grad d| - 1)^2
    L_a  (albedo)   w_a1 * mean over O |a - a_true| + w_a2 * mean over F |a - a_true|
    L_s  (shading)  mean over the points of O that the photograph shows (depth test against its depth
                    map) of |a_true * S(n_true, code) - pixel colour|: the shading network and the
                    illumination code learn the photograph's light from the true albedo and normals
                    (the thesis's eq. 5.13)

and, on a `patch` x `patch` window of the photograph (around a random head pixel) of the first
`render_heads` samples, sphere-traced front and back through the network's field (`render.spheretrace`,
the exit point by the same march from the far side):

    L_c  (render albedo)   mean over the pixels the head covers and the trace hits of |a(x_f) - a_true
                           front| + (where the back is hit) |a(x_b) - a_true back| (eq. 5.11)
    L_r  (render shading)  mean over those pixels of |a(x_f) * S(n(x_f), code) - pixel colour|, with the
                           traced point's predicted albedo and normal (eq. 5.12)
    L_m  (silhouette)      BCE of the soft mask sigmoid(-k min_t d(o + t r)) (eq. 5.10, k the label
                           loss's) against the photograph's coverage

    loss = L_g + w_l L_l + w_e L_e + w_a L_a + w_s L_s + w_c L_c + w_r L_r + w_m L_m

Defaults: the thesis's weights (w_g2 1, w_l 0.2, w_e 0.1, w_a1 0.5, w_a2 0.3, w_s 50 -> 1 here: the
thesis's 50 is for its RGB scale; see `PhorhumTrainConfig`).

Validation (instead of the ring networks' voxel IoU): on the first `val_objects` heads of the
validation split, from their first photograph, the IoU of the points of F the network calls inside
(d < 0) against their labels (`val_iou`, the best kept), and the mean albedo error on O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import losses as L
from ..cameras import Cameras
from ..errors import InputError
from ..optim.distributed import Distributed
from ..render.spheretrace import sphere_trace
from .phorhum import BASES, PhorhumNet
from .training import Batch, TrainingConfig, TrainingTask, TrainResult, run_training

TRACE_RADIUS = 0.65  # the tracer's bounding sphere (head units): holds every generated head
VISIBLE_DEPTH = 0.01  # a surface point is seen when its depth is within this of the depth map's (head units)


@dataclass
class PhorhumTrainConfig(TrainingConfig):
    """Training settings of the head network (run settings: `TrainingConfig`)."""

    channels: tuple[int, ...] = (24, 48, 96, 192)  # network shape: `PhorhumNetConfig`
    features: int = 64
    frequencies: int = 6
    width: int = 128
    depth: int = 6
    light_code: int = 16
    base: str = "mean_head"            # the distance's prior: "mean_head" or "sphere" (`PhorhumNetConfig`)
    surface_points: int = 512          # per sample and step, of the head's set O
    label_points: int = 1024           # per sample and step, of the head's set F
    w_g1_start: float = 1.0            # the thesis: lambda_g1 linearly from 1 to 15
    w_g1_end: float = 15.0
    w_g1_ramp: int = 1000              # iterations of the rise (then constant)
    w_g2: float = 1.0
    w_l: float = 0.2
    w_e: float = 0.1
    w_a: float = 1.0
    w_a1: float = 0.5
    w_a2: float = 0.3
    w_s: float = 1.0
    render_heads: int = 2              # samples of the batch rendered per step (0: no rendering losses)
    patch: int = 32                    # the thesis's 32 x 32 patches
    trace_steps: int = 48              # sphere-tracing steps per ray
    w_c: float = 1.0
    w_r: float = 1.0
    w_m: float = 1.0
    batch_size: int = 8
    lr: float = 5e-4
    iterations: int = 20_000
    decay_at: int = 15_000
    val_objects: int | None = 8
    val_views: int = 1
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if min(self.surface_points, self.label_points, self.patch, self.trace_steps) < 1 or self.w_g1_ramp < 0 \
                or self.render_heads < 0:
            raise ValueError("surface_points, label_points, patch and trace_steps must be positive, "
                             "w_g1_ramp and render_heads >= 0")
        if self.base not in BASES:
            raise ValueError(f"unknown base {self.base!r}; choose one of {', '.join(BASES)}")

    def w_g1(self, iteration: int) -> float:
        """lambda_g1 at a 0-based iteration."""
        if self.w_g1_ramp == 0:
            return self.w_g1_end
        t = min(1.0, iteration / self.w_g1_ramp)
        return self.w_g1_start + t * (self.w_g1_end - self.w_g1_start)


@dataclass
class HeadBatch:
    """This process's shard: per sample a head and its photograph a, as tensors on the device."""

    objects: np.ndarray
    images: Tensor        # (B, 4, S, S) RGB + mask in [0, 1]
    cameras: Cameras
    depth: Tensor         # (B, S, S) the photograph's depth map (0 off the head)
    surface: Tensor       # (B, n_O, 9) point, normal, albedo
    points: Tensor        # (B, n_F, 3)
    labels: Tensor        # (B, n_F) bool inside
    point_albedo: Tensor  # (B, n_F, 3)
    decay: float
    corners: Tensor       # (R, 2) top-left (column, row) of the rendered samples' patches
    patches: dict[str, Tensor]  # the rendered samples' patches: "albedo", "back_albedo", "colour" (R, k, k, 3), "mask" (R, k, k)


def head_images(split: Any, objects: np.ndarray, views: np.ndarray, device: torch.device,
                dtype: torch.dtype) -> Tensor:
    """(B, 4, S, S) RGB + mask in [0, 1] of the given (head, photograph) pairs."""
    return torch.from_numpy(split.rgba(objects, views)).to(device).permute(0, 3, 1, 2).to(dtype).div_(255.0)


def head_cameras(split: Any, objects: np.ndarray, views: np.ndarray, device: torch.device,
                 dtype: torch.dtype) -> Cameras:
    """The cameras of the given (head, photograph) pairs."""
    return split.view_cameras(objects, views).to(device=device, dtype=dtype)


class PhorhumTraining(TrainingTask):
    """The head network's task for the shared loop (the losses of the module docstring)."""

    loss_names = ("loss", "surface", "label", "eikonal", "albedo", "shading", "render_albedo", "render_shading",
                  "silhouette")
    plotted = loss_names[1:]
    validation = ("val_iou", "inside IoU of the points F")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.iteration = 0
        self.sample_rng = np.random.default_rng([self.config.seed, 7])
        self.val_albedo: float | None = None

    def next_batch(self, iteration: int) -> HeadBatch:
        cfg, split, device, dtype = self.config, self.train_split, self.device, self.config.torch_dtype
        objects, views, _ = self.sampler.sample(cfg.batch_size)
        n_o, n_f = split.surface.shape[1], split.points.shape[1]
        # the global batch's picks, then this process's rows: every process draws the same
        pick_o = np.sort(self.sample_rng.integers(0, n_o, (cfg.batch_size, cfg.surface_points)), axis=1)[self.shard]
        pick_f = np.sort(self.sample_rng.integers(0, n_f, (cfg.batch_size, cfg.label_points)), axis=1)[self.shard]
        objects, views = objects[self.shard], views[self.shard]
        rows = objects[:, None]
        rendered = math.ceil(min(cfg.render_heads, cfg.batch_size) * len(objects) / cfg.batch_size)
        corners = self.patch_corners(objects, views, cfg.batch_size)[:rendered]

        def tensor(array: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        return HeadBatch(
            objects, head_images(split, objects, views, device, dtype),
            head_cameras(split, objects, views, device, dtype),
            tensor(split.depth[objects, views]).to(dtype),
            tensor(split.surface[rows, pick_o]).to(dtype), tensor(split.points[rows, pick_f]).to(dtype),
            tensor(split.labels[rows, pick_f]), tensor(split.point_albedo[rows, pick_f]).to(dtype) / 255.0,
            cfg.decay_factor(iteration, self.decay_from), torch.from_numpy(corners),
            self.patches(objects[:rendered], views[:rendered], corners))

    def patch_corners(self, objects: np.ndarray, views: np.ndarray, global_batch: int) -> np.ndarray:
        """(B, 2) top-left (column, row) of a patch around a random head pixel of each photograph, the
        patch inside the image; one draw for the global batch, so every process draws the same."""
        split, k = self.train_split, self.config.patch
        S = int(split.images.shape[2])
        if k > S:
            raise InputError(f"patch {k} is larger than the {S}x{S} photographs: set patch <= {S}")
        pick = self.sample_rng.random((global_batch,))[self.shard]
        corners = np.zeros((len(objects), 2), dtype=np.int64)
        for n, (o, v) in enumerate(zip(objects, views)):
            rows, cols = np.nonzero(np.asarray(split.masks[o, v]) > 0)
            at = int(pick[n] * len(rows)) if len(rows) else 0
            centre = np.array([cols[at], rows[at]]) if len(rows) else np.array([S // 2, S // 2])
            corners[n] = np.clip(centre - k // 2, 0, S - k)
        return corners

    def patches(self, objects: np.ndarray, views: np.ndarray, corners: np.ndarray) -> dict[str, Tensor]:
        """The rendered samples' k x k windows of albedo, back albedo, colour (in [0, 1]) and coverage."""
        split, k, device, dtype = self.train_split, self.config.patch, self.device, self.config.torch_dtype
        out: dict[str, list] = {"albedo": [], "back_albedo": [], "colour": [], "mask": []}
        for o, v, (c, r) in zip(objects, views, corners):
            window = (o, v, slice(r, r + k), slice(c, c + k))
            for name, array in (("albedo", split.albedo), ("back_albedo", split.back_albedo),
                                ("colour", split.images), ("mask", split.masks)):
                out[name].append(np.asarray(array[window]))
        shape = {"albedo": (0, k, k, 3), "back_albedo": (0, k, k, 3), "colour": (0, k, k, 3), "mask": (0, k, k)}
        return {name: (torch.from_numpy(np.stack(values)) if values else torch.zeros(shape[name]))
                .to(device, dtype) / 255.0 for name, values in out.items()}

    def step(self, iteration: int) -> dict[str, float]:
        self.iteration = iteration
        return super().step(iteration)

    def batch_losses(self, batch: HeadBatch) -> dict[str, Tensor]:  # type: ignore[override]
        cfg = self.config
        surface_points, normals, albedo = batch.surface[..., :3], batch.surface[..., 3:6], batch.surface[..., 6:9]
        n_o = surface_points.shape[1]
        out = self.model(batch.images, batch.cameras, torch.cat([surface_points, batch.points], dim=1), normals)
        d, predicted_albedo, gradient = out["d"], out["albedo"], out["gradient"]
        surface = L.surface_sdf_loss(d[:, :n_o], gradient[:, :n_o], normals, cfg.w_g1(self.iteration), cfg.w_g2)
        label = L.inside_label_loss(d[:, n_o:], batch.labels, out["sharpness"])
        eikonal = L.eikonal_loss(gradient[:, n_o:].reshape(-1, 3))
        albedo_loss = cfg.w_a1 * (predicted_albedo[:, :n_o] - albedo).abs().mean() + \
            cfg.w_a2 * (predicted_albedo[:, n_o:] - batch.point_albedo).abs().mean()
        shading = shading_loss(batch, albedo * out["shading"])
        loss = surface + cfg.w_l * label + cfg.w_e * eikonal + cfg.w_a * albedo_loss + cfg.w_s * shading
        parts = {"surface": surface, "label": label, "eikonal": eikonal, "albedo": albedo_loss, "shading": shading}
        if len(batch.corners):
            rendered = self.render_losses(batch, out["features"], out["codes"], out["sharpness"])
            loss = loss + cfg.w_c * rendered["render_albedo"] + cfg.w_r * rendered["render_shading"] + \
                cfg.w_m * rendered["silhouette"]
            parts.update(rendered)
        else:
            parts.update({name: loss.new_zeros(()) for name in ("render_albedo", "render_shading", "silhouette")})
        return {"loss": loss, **parts}

    def render_losses(self, batch: HeadBatch, features: Tensor, codes: Tensor, sharpness: Tensor
                      ) -> dict[str, Tensor]:
        """L_c, L_r and L_m (the module docstring) of the rendered samples' patches, means over them."""
        cfg, net = self.config, self.net
        terms: dict[str, list[Tensor]] = {"render_albedo": [], "render_shading": [], "silhouette": []}
        for i, corner in enumerate(batch.corners):
            camera = batch.cameras[i]
            origins, directions = camera.patch_rays(corner[None], cfg.patch)
            trace = sphere_trace(net.field(features[i:i + 1], camera), origins[0, 0], directions[0, 0],
                                 radius=TRACE_RADIUS, max_steps=cfg.trace_steps, relax=0.9, back=True,
                                 soft_k=float(sharpness.detach()))
            covered = batch.patches["mask"][i] >= 1.0
            front, back = trace["mask"] & covered, trace["back_mask"] & covered
            points = torch.cat([trace["position"][front], trace["back_position"][back]])
            _, albedo = net.query(features[i:i + 1], camera, points[None])
            a_front, a_back = albedo[0, :int(front.sum())], albedo[0, int(front.sum()):]
            error = (a_front - batch.patches["albedo"][i][front]).abs().sum(-1)
            error_back = (a_back - batch.patches["back_albedo"][i][back]).abs().sum(-1)
            terms["render_albedo"].append((error.sum() + error_back.sum()) / front.sum().clamp_min(1))
            shaded = a_front * net.shade(trace["normal"][front][None], codes[i:i + 1])[0]
            terms["render_shading"].append((shaded - batch.patches["colour"][i][front]).abs().sum(-1).mean()
                                           if front.any() else shaded.sum())
            terms["silhouette"].append(L.mask_bce(trace["soft_mask"], batch.patches["mask"][i]))
        return {name: torch.stack(values).mean() for name, values in terms.items()}

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The inside IoU of F and the albedo error on O of the first `val_objects` validation heads
        from their first photograph (rank 0), the best IoU remembered."""
        iou, albedo = validate(self.net, self.val_split, self.config.val_objects, self.device, self.config.torch_dtype)
        self.val_iou, self.val_albedo = iou, albedo
        if math.isfinite(iou) and (self.best_val_iou is None or iou > self.best_val_iou):
            self.best_val_iou = iou
        return {"val_iou": iou, "val_albedo": albedo}

    def result_metrics(self) -> dict[str, float | None]:
        return {"val_albedo": self.val_albedo}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sample_rng": self.sample_rng.bit_generator.state,
                "val_albedo": self.val_albedo}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sample_rng.bit_generator.state = state["sample_rng"]
        self.val_albedo = state["val_albedo"]


def shading_loss(batch: HeadBatch, shaded: Tensor) -> Tensor:
    """L_s: the colours `shaded` (B, n_O, 3) of the surface samples against the photograph's pixel
    colour, averaged over the samples each photograph shows (depth test against its depth map), then
    over the photographs."""
    points = batch.surface[..., :3]
    uv, z = batch.cameras.project(points)
    S = batch.images.shape[-1]
    pixel = uv.floor().long().clamp(0, S - 1)
    seen_depth = batch.depth.flatten(1).gather(1, pixel[..., 1] * S + pixel[..., 0])
    in_image = (uv >= 0).all(-1) & (uv < S).all(-1)
    visible = in_image & (seen_depth > 0) & ((seen_depth - z).abs() < VISIBLE_DEPTH)
    grid = (2 * uv / S - 1)[:, :, None, :]
    colour = torch.nn.functional.grid_sample(batch.images[:, :3], grid.to(batch.images.dtype),
                                             align_corners=False)[..., 0].transpose(1, 2)
    error = (shaded - colour).abs().sum(-1)
    # per head, then over the heads: every loss is a mean over the samples (as data-parallel runs average)
    return torch.stack([L.masked_mean(e, v.to(e.dtype)) for e, v in zip(error, visible)]).mean()


@torch.no_grad()
def validate(net: PhorhumNet, split: Any, objects: int | None, device: torch.device,
             dtype: torch.dtype = torch.float32, chunk: int = 4) -> tuple[float, float]:
    """(inside IoU over the points F, mean absolute albedo error over O) of the first `objects` heads
    from their first photograph."""
    n = len(split) if objects is None else min(objects, len(split))
    intersection = union = 0
    errors = []
    was_training = net.training
    net.eval()
    try:
        for start in range(0, n, chunk):
            heads = np.arange(start, min(n, start + chunk))
            views = np.zeros(len(heads), dtype=np.int64)
            features, _ = net.encode(head_images(split, heads, views, device, dtype))
            cameras = head_cameras(split, heads, views, device, dtype)
            points = torch.from_numpy(np.ascontiguousarray(split.points[heads])).to(device, dtype)
            labels = torch.from_numpy(np.ascontiguousarray(split.labels[heads])).to(device)
            d, _ = net.query(features, cameras, points)
            inside = d < 0
            intersection += int((inside & labels).sum())
            union += int((inside | labels).sum())
            surface = torch.from_numpy(np.ascontiguousarray(split.surface[heads])).to(device, dtype)
            _, albedo = net.query(features, cameras, surface[..., :3])
            errors.append((albedo - surface[..., 6:9]).abs().mean(-1).flatten())
    finally:
        net.train(was_training)
    return intersection / max(union, 1), float(torch.cat(errors).mean())


def open_head_splits(dataset: Any, train_split: str, val_split: str | None, val: Any = None) -> tuple[Any, Any]:
    """(train, validation or None) head splits from a head dataset folder, or split objects as given."""
    if isinstance(dataset, (str, Path)):
        from .dataset.heads import load_head_split
        return load_head_split(dataset, train_split), (load_head_split(dataset, val_split) if val_split else None)
    return dataset, (val if val_split else None)


def check_head_split(split: Any, name: str) -> None:
    """InputError unless the split holds heads with photographs of a square size and both sample sets."""
    needed = ("images", "masks", "depth", "K", "world_to_camera", "surface", "points", "labels", "point_albedo")
    missing = [k for k in needed if getattr(split, k, None) is None]
    if missing or len(split) < 1:
        raise InputError(f"the {name} split is not a head dataset's (missing {', '.join(missing) or 'heads'}): "
                         f"write one with zerolevel dataset --generate heads")
    shape = tuple(split.images.shape)
    if len(shape) != 5 or shape[2] != shape[3] or shape[-1] != 3:
        raise InputError(f"the {name} split needs (N, V, S, S, 3) photographs, got {shape}")


def _make_task(train_split: Any, val_split: Any, config: PhorhumTrainConfig, dist: Distributed,
               device: torch.device) -> PhorhumTraining:
    size = int(train_split.images.shape[2])
    try:
        net = PhorhumNet(image_size=size, channels=config.channels, features=config.features,
                         frequencies=config.frequencies, width=config.width, depth=config.depth,
                         light_code=config.light_code, base=config.base)
    except ValueError as error:
        raise InputError(f"{error}: set channels to fewer levels for {size}x{size} photographs") from None
    return PhorhumTraining(net.to(device, config.torch_dtype), train_split, val_split, config, dist, device)


def train(dataset: str | Path | Any, run_dir: str | Path, config: PhorhumTrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train a PhorhumNet on a head dataset (`zerolevel dataset --generate heads`).

    Arguments as `learn.train.train` (SoftRas's); `dataset` is a head dataset folder or a `HeadSplit`
    (with `val` its validation split). The log has the losses and `val_iou` / `val_albedo` lines.
    """
    config = config or PhorhumTrainConfig()
    return run_training(_make_task, dataset, run_dir, config, "phorhum", device, val=val, resume=resume,
                        progress=progress, threads=threads, desc="training phorhum",
                        open_fn=open_head_splits, check_fn=check_head_split)
