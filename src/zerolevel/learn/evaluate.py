"""Evaluation of a trained single-view network on a dataset split, by the published protocol.

One job: `evaluate_run(run, dataset)` scores a run folder (or checkpoint) on a split of a dataset
folder and returns a JSON-ready dict; `format_table` prints it (`zerolevel eval-set`). `EvalRequest` is
what `eval-set` asks of any network's evaluation; `eval_set` answers it for the mesh networks
(SoftRas's, the tet network), and each other network's module has its own (the registry's `evaluate`).

The protocol (Soft Rasterizer's examples/recon/test.py, and DESIGN.md):
- Voxel IoU: every view of every object of the split (SoftRas: all 24 ring views; `views` evenly
  spaced ones when asked) goes through the network; the predicted closed mesh is voxelised on the
  dataset's 32^3 grid over [-0.5, 0.5]^3 the way the object was (the published voxelisation,
  `zerolevel.geometry.occupancy.solid_voxels`) and compared with the object's voxels (`voxel_iou`). A
  category's IoU is the mean over all its (object, view) pairs; the headline figure is the mean over
  categories, each counting once however many objects it has.
- Surface metrics: Chamfer distance, F-score at tau = 0.005 and 0.0025 of the ground truth's
  bounding-box diagonal and normal consistency (`zerolevel.metrics.evaluate`, the protocol of
  `zerolevel eval`) of the predicted mesh against the object's normalised mesh
  (`DatasetSplit.mesh_path`), on the first `surface_views` of the evaluated views of each object (by
  default one: view 0, the front), since surface sampling costs far more than a voxel IoU.
  Aggregated like the IoU.
- The mean-shape baseline: one shape for every input, the cells occupied in more than a fraction t
  of the TRAIN split's objects (t = 0.5: a majority vote), t chosen from `MEAN_SHAPE_THRESHOLDS` to
  maximise the category-mean IoU on the train split; scored on the same objects as the network. A
  network that does not beat it has not learnt to read the image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from ..errors import InputError
from ..geometry.mesh import load_mesh
from ..geometry.occupancy import solid_voxels
from ..metrics import DEFAULT_TAUS, evaluate, tau_key
from .dataset.settings import VOXEL_BOUNDS
from .predict import load_run, network_from_run
from .sampling import input_cameras, split_images
from .softras_net import SoftRasNet

FORMAT = "zerolevel-eval-set"
SURFACE_POINTS = 100_000  # DESIGN.md: at least 100k samples per surface
MEAN_SHAPE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


# ---------------------------------------------------------------------------------------- aggregation
def category_means(categories: Sequence[str], values: np.ndarray) -> dict[str, Any]:
    """Per-category means and their mean, the protocol's aggregation.

    Args:
        categories: (N,) category of each object.
        values: (N,) or (N, K) values per object (K views each); NaN values are left out.
    Returns:
        {"per_category": {category: mean over its objects' values} (categories sorted),
         "mean": mean over the categories (each counts once), "objects": {category: N_c}};
        a mean with no finite value is None.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(categories), -1)
    labels = np.asarray(list(categories), dtype=object)
    per_category, counts = {}, {}
    for category in sorted(set(labels.tolist())):
        rows = values[labels == category]
        counts[category] = int(len(rows))
        per_category[category] = _nanmean(rows)
    finite = [v for v in per_category.values() if v is not None]
    return {"per_category": per_category, "mean": float(np.mean(finite)) if finite else None, "objects": counts}


def _nanmean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def view_indices(num_views: int, views: int | None = None) -> np.ndarray:
    """The evaluated views: all `num_views` (None), or `views` evenly spaced over the ring from view 0."""
    if views is None or views >= num_views:
        return np.arange(num_views, dtype=np.int64)
    if views < 1:
        raise InputError(f"views must be positive, got {views}")
    return np.unique(np.linspace(0, num_views, views, endpoint=False).astype(np.int64))


# ---------------------------------------------------------------------------------------- mean shape
@dataclass
class MeanShape:
    """The mean-shape baseline: `voxels` (n, n, n) bool, the cells occupied in more than a fraction
    `threshold` of the train objects, and its category-mean IoU on the train split."""

    voxels: np.ndarray
    threshold: float
    train_iou: float


def _as_voxels(voxels: Any) -> np.ndarray:
    """(N, n, n, n) bool from an array or a split (its `.voxels`)."""
    voxels = getattr(voxels, "voxels", voxels)
    if np.ndim(voxels) != 4 or len(voxels) == 0:
        raise InputError(f"need (N >= 1, n, n, n) voxels, got shape {np.shape(voxels)}")
    return voxels


def occupancy_frequency(voxels: Any, chunk: int = 256) -> np.ndarray:
    """(n, n, n) float64: the fraction of the objects occupying each cell (of (N, n, n, n) bool voxels
    or a split), summed in chunks so that a memory-mapped split is never copied whole."""
    voxels = _as_voxels(voxels)
    total = np.zeros(voxels.shape[1:], dtype=np.int64)
    for start in range(0, len(voxels), chunk):
        total += np.asarray(voxels[start:start + chunk], dtype=bool).sum(axis=0)
    return total / len(voxels)


def mean_shape_voxels(voxels: Any, threshold: float = 0.5) -> np.ndarray:
    """(n, n, n) bool: the cells occupied in more than `threshold` of the objects ((N, n, n, n) bool
    voxels or a split); 0.5 is the majority vote (a tie is empty)."""
    return occupancy_frequency(voxels) > threshold


def voxel_ious(shape: np.ndarray, voxels: Any, chunk: int = 256) -> np.ndarray:
    """(N,) IoU of one (n, n, n) bool grid with each of (N, n, n, n) bool voxels (NaN when both are empty)."""
    voxels = _as_voxels(voxels)
    flat = np.asarray(shape, dtype=bool).reshape(-1)
    out = np.empty(len(voxels))
    for start in range(0, len(voxels), chunk):
        block = np.asarray(voxels[start:start + chunk], dtype=bool).reshape(-1, flat.size)
        inter = np.count_nonzero(block & flat, axis=1)
        union = np.count_nonzero(block | flat, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + len(block)] = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return out


def fit_mean_shape(train: Any, thresholds: Sequence[float] = MEAN_SHAPE_THRESHOLDS,
                   categories: Sequence[str] | None = None) -> MeanShape:
    """The mean shape of a train split (or (N, n, n, n) voxels with `categories`), its threshold chosen
    among `thresholds` to maximise the category-mean IoU on those same objects (ties: nearer 0.5)."""
    voxels = _as_voxels(train)
    categories = list(getattr(train, "categories", None) or categories or ["all"] * len(voxels))
    frequency = occupancy_frequency(voxels)
    best = None
    for t in sorted(thresholds, key=lambda t: abs(t - 0.5)):
        iou = category_means(categories, voxel_ious(frequency > t, voxels))["mean"]
        iou = -1.0 if iou is None else iou
        if best is None or iou > best.train_iou:
            best = MeanShape(frequency > t, float(t), iou)
    return best


# ---------------------------------------------------------------------------------------- voxel IoU
def voxel_iou(vertices: np.ndarray, faces: np.ndarray, voxels: np.ndarray) -> float:
    """IoU of a mesh's voxels (`solid_voxels`, n^3 over [-0.5, 0.5]^3) with (n, n, n) bool voxels
    indexed [x, y, z]; nan when both are empty."""
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False,
                           validate=False)
    inside = solid_voxels(mesh, VOXEL_BOUNDS, voxels.shape[0])
    union = np.count_nonzero(inside | voxels)
    return float(np.count_nonzero(inside & voxels) / union) if union else float("nan")


@torch.no_grad()
def evaluate_iou(net: torch.nn.Module, split: Any, views: int = 24, objects: int | None = None,
                 batch_size: int = 64) -> np.ndarray:
    """Voxel IoU of the network's mesh for each validation object and view.

    Args:
        net: a single-view network with `predict_meshes(images)` (evaluated in eval mode; its mode
            is restored).
        split: a dataset split (images (N, V, S, S, 4), voxels (N, n, n, n)).
        views: views per object, evenly spaced over the V ring views.
        objects: the first `objects` objects (None: all).
    Returns:
        (N', views) float64 IoUs.
    """
    n_obj = len(split) if objects is None else min(int(objects), len(split))
    V = split.images.shape[1]
    view_ids = view_indices(V, views)
    obj = np.repeat(np.arange(n_obj), len(view_ids))
    vid = np.tile(view_ids, n_obj)
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    was_training = net.training
    net.eval()
    ious = np.empty(len(obj))
    for start in range(0, len(obj), batch_size):
        o, v = obj[start:start + batch_size], vid[start:start + batch_size]
        meshes = net.predict_meshes(split_images(split, o, v, device, dtype), input_cameras(net, split, v, device, dtype))
        for k, (i, (verts, faces)) in enumerate(zip(o, meshes)):
            ious[start + k] = voxel_iou(verts, faces, np.asarray(split.voxels[i], dtype=bool))
    net.train(was_training)
    return ious.reshape(n_obj, len(view_ids))


# ---------------------------------------------------------------------------------------- the network
def _load_network(run: str | Path, device: str | torch.device) -> tuple[SoftRasNet, dict]:
    """The trained network (eval mode) of a run folder or checkpoint, and the checkpoint's metadata."""
    payload = load_run(run)
    net = network_from_run(payload, run, device)
    meta = {"iteration": int(payload["iteration"]), "encoder": net.config.encoder,
            "image_size": net.config.image_size}
    return net, meta


def surface_scores(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, taus: Sequence[float] = DEFAULT_TAUS,
                   points: int = SURFACE_POINTS, seed: int = 0) -> dict[str, float]:
    """{"chamfer", "normal_consistency", "fscore@<tau_key>"} of a predicted mesh against the object's
    (`zerolevel.metrics.evaluate`, distances in GT bounding-box diagonals)."""
    metrics = evaluate(mesh, gt, taus=tuple(taus), n_points=points, seed=seed)
    return {"chamfer": metrics["chamfer"], "normal_consistency": metrics["normal_consistency"],
            **{f"fscore@{tau_key(t)}": metrics["fscore"][tau_key(t)] for t in taus}}


@torch.no_grad()
def score_predictions(net: torch.nn.Module, split: Any, view_ids: np.ndarray, surface_views: int = 1,
                      taus: Sequence[float] = DEFAULT_TAUS, points: int = SURFACE_POINTS, batch_size: int = 32,
                      seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Predict a mesh from each (object, view) of a split and score it.

    Args:
        net: the trained network (run in eval mode; its mode is restored).
        split: a dataset split (images (N, V, S, S, 4), voxels (N, n, n, n), mesh_path(i) for surfaces).
        view_ids: (K,) the evaluated views of every object.
        surface_views: surface metrics for the first this many of `view_ids` (0: none).
        taus: F-score thresholds, fractions of the GT bounding-box diagonal.
        points: surface samples per mesh.
    Returns:
        {"iou": (N, K), "chamfer": (N, K'), "normal_consistency": (N, K'), "fscore@<tau_key>": (N, K')}
        float64 arrays, K' = min(surface_views, K).
    """
    n_obj, K = len(split), len(view_ids)
    K_s = min(max(int(surface_views), 0), K)
    objects, views = np.repeat(np.arange(n_obj), K), np.tile(np.asarray(view_ids, dtype=np.int64), n_obj)
    parameter = next(net.parameters())
    out = {"iou": np.full(n_obj * K, np.nan), "chamfer": np.full((n_obj, K_s), np.nan),
           "normal_consistency": np.full((n_obj, K_s), np.nan)}
    for tau in taus:
        out[f"fscore@{tau_key(tau)}"] = np.full((n_obj, K_s), np.nan)
    gt_index, gt = -1, None
    was_training = net.training
    net.eval()  # BatchNorm with its running statistics
    bar = tqdm(total=len(objects), desc="eval-set", unit="view", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(objects), batch_size):
            o, v = objects[start:start + batch_size], views[start:start + batch_size]
            meshes = net.predict_meshes(split_images(split, o, v, parameter.device, parameter.dtype),
                                        input_cameras(net, split, v, parameter.device, parameter.dtype))
            for k, (i, (verts, faces)) in enumerate(zip(o, meshes)):
                pair = start + k
                out["iou"][pair] = voxel_iou(verts, faces, np.asarray(split.voxels[i], dtype=bool))
                j = pair % K  # the view's place among view_ids
                if j < K_s:
                    if gt_index != i:
                        gt_index, gt = i, load_mesh(split.mesh_path(i))
                    scores = surface_scores(trimesh.Trimesh(verts, faces, process=False), gt, taus, points, seed)
                    for key, value in scores.items():
                        out[key][i, j] = value
                bar.update(1)
    finally:
        bar.close()
        net.train(was_training)
    out["iou"] = out["iou"].reshape(n_obj, K)
    return out


# ---------------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class EvalRequest:
    """`zerolevel eval-set`'s options, for whichever network the run holds (each network's evaluation
    uses the fields that apply to it; the registry's `TrainParts.evaluate` answers it)."""

    split: str = "test"
    views: int | None = None           # views per object, evenly spaced from view 0 (heads: the first N heads)
    surface_views: int = 1             # Chamfer / F-score on the first this many evaluated views
    taus: tuple[float, ...] = DEFAULT_TAUS
    points: int = SURFACE_POINTS       # surface samples per mesh
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    gallery: str | None = None         # a PNG of predictions beside the truth
    gallery_objects: int = 2           # objects per category (heads: heads in all)
    level: str | None = None           # an SDFNet's lattice ("coarse" or "fine"; None: its default)


def eval_set(run: str | Path, dataset: str | Path, request: EvalRequest) -> tuple[dict[str, Any], str]:
    """`evaluate_run` as `eval-set` asks it: (the JSON-ready result, its table for the terminal)."""
    from .gallery import COLUMNS

    result = evaluate_run(run, dataset, split=request.split, views=request.views, surface_views=request.surface_views,
                          taus=request.taus, points=request.points, batch_size=request.batch_size,
                          device=request.device, seed=request.seed, progress=request.progress,
                          gallery=request.gallery, gallery_objects=request.gallery_objects, level=request.level)
    table = format_table(result)
    if request.gallery:
        table += f"\nwrote {request.gallery}: per row {', '.join(COLUMNS)}"
    return result, table


def evaluate_run(run: str | Path, dataset: str | Path, split: str = "test", views: int | None = None,
                 surface_views: int = 1, taus: Sequence[float] = DEFAULT_TAUS, points: int = SURFACE_POINTS,
                 batch_size: int = 32, device: str | torch.device = "cpu", seed: int = 0,
                 progress: bool = True, gallery: str | Path | None = None,
                 gallery_objects: int = 2, level: str | None = None) -> dict[str, Any]:
    """Score a trained network on a split of a dataset folder (see the module docstring).

    Args:
        run: a run folder or its checkpoint.pt (`zerolevel train`).
        dataset: the dataset folder (`zerolevel dataset`); its train split gives the mean shape.
        split: the evaluated split ("test", "val" or "train").
        views: views per object, evenly spaced from view 0 (None: all of them, the protocol).
        surface_views: Chamfer / F-score on the first this many evaluated views of each object (0: none).
        taus: F-score thresholds, fractions of the GT bounding-box diagonal; points: samples per surface.
        gallery: also write a PNG of predictions beside the truth here (`gallery.prediction_sheet`, the
            first `gallery_objects` objects of each category, from view 0).
        level: the lattice an SDFNet's meshes come from ("coarse" or "fine", its default); None for
            another network.
    Returns:
        A JSON-ready dict: "format", "run", "dataset", "split", "checkpoint" {"iteration", "encoder",
        "image_size"}, "objects", "views" (ids), "voxels" (n), "iou" and "mean_shape" {"threshold",
        "train_iou", "iou"} (each IoU: `category_means`' dict), "surface" (None without surface views;
        else "views", "points", "tau_units", "chamfer", "normal_consistency", "fscore" {tau_key: ...}),
        "per_object" [{"id", "category", "iou" (per view), "mean_shape_iou", "chamfer", "fscore"}],
        "gallery" (the PNG's path, or None), "seconds". Undefined values are None.
    Raises:
        InputError: a missing or foreign run or dataset, an empty split, a network of another image size.
    """
    from .dataset.folder import load_split

    start = time.perf_counter()
    net, meta = _load_network(run, device)
    if level is not None:
        if not hasattr(net, "level"):
            raise InputError(f"a {type(net).__name__} has one output: --level chooses an sdfnet's lattice", run)
        net.level = level
        meta["level"] = level
    test, train = load_split(dataset, split), load_split(dataset, "train")
    size = test.images.shape[2]
    if meta["image_size"] != size:
        raise InputError(f"the network takes {meta['image_size']}x{meta['image_size']} images, this dataset's "
                         f"are {size}x{size}", dataset)
    if len(test) == 0 or len(train) == 0:
        raise InputError(f"the {'train' if len(test) else split} split has no objects", dataset)
    view_ids = view_indices(test.images.shape[1], views)
    if gallery is not None:
        from .gallery import write_prediction_sheet

        write_prediction_sheet(gallery, net, test, gallery_objects)
    scores = score_predictions(net, test, view_ids, surface_views, taus, points, batch_size, seed, progress)
    shape = fit_mean_shape(train)
    baseline = voxel_ious(shape.voxels, test)
    cats = list(test.categories)
    K_s = scores["chamfer"].shape[1]
    surface = None
    if K_s:
        surface = {"views": view_ids[:K_s].tolist(), "points": int(points), "tau_units": "gt_bbox_diagonal",
                   "chamfer": category_means(cats, scores["chamfer"]),
                   "normal_consistency": category_means(cats, scores["normal_consistency"]),
                   "fscore": {tau_key(t): category_means(cats, scores[f"fscore@{tau_key(t)}"]) for t in taus}}
    per_object = []
    for i in range(len(test)):
        row = {"id": test.ids[i], "category": cats[i], "iou": scores["iou"][i].tolist(),
               "mean_shape_iou": float(baseline[i])}
        if K_s:
            row["chamfer"] = scores["chamfer"][i].tolist()
            row["fscore"] = {tau_key(t): scores[f"fscore@{tau_key(t)}"][i].tolist() for t in taus}
        per_object.append(row)
    result = {"format": FORMAT, "run": str(run), "dataset": str(dataset), "split": split, "checkpoint": meta,
              "objects": len(test), "views": view_ids.tolist(), "voxels": int(test.voxels.shape[1]),
              "iou": category_means(cats, scores["iou"]),
              "mean_shape": {"threshold": shape.threshold, "train_iou": shape.train_iou,
                             "iou": category_means(cats, baseline)},
              "surface": surface, "per_object": per_object, "gallery": None if gallery is None else str(gallery),
              "seconds": round(time.perf_counter() - start, 2)}
    return _finite(result)


def _finite(value: Any) -> Any:
    """The same structure with NaN / infinite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------- the table
def format_table(result: dict[str, Any]) -> str:
    """An aligned text table of an `evaluate_run` result: a row per category and the mean over categories."""
    surface = result.get("surface")
    taus = list(surface["fscore"]) if surface else []
    header = ["category", "objects", "IoU", "mean-shape IoU"]
    if surface:
        header += ["Chamfer"] + [f"F@{t}" for t in taus]
    categories = list(result["iou"]["per_category"])

    def cells(key: str | None) -> list[str]:
        pick = (lambda d: d["mean"]) if key is None else (lambda d: d["per_category"].get(key))
        row = [_num(pick(result["iou"])), _num(pick(result["mean_shape"]["iou"]))]
        if surface:
            row += [_num(pick(surface["chamfer"]))] + [_num(pick(surface["fscore"][t])) for t in taus]
        return row

    rows = [[c, str(result["iou"]["objects"][c])] + cells(c) for c in categories]
    rows.append(["mean", str(result["objects"])] + cells(None))
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = ["  ".join(text.ljust(w) if k == 0 else text.rjust(w) for k, (text, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    views = result["views"]
    which = "all" if len(views) > 1 and views == list(range(len(views))) else ", ".join(map(str, views))
    title = (f"{result['split']} split of {result['dataset']}: {result['objects']} objects, "
             f"{len(views)} views each ({which}); voxel IoU at {result['voxels']}^3, "
             f"mean = mean over {len(categories)} categories")
    notes = [f"mean shape: cells occupied in > {result['mean_shape']['threshold']:g} of the train objects "
             f"(train IoU {_num(result['mean_shape']['train_iou'])}), the same shape for every input"]
    if surface:
        notes.append(f"Chamfer and F-score: view(s) {', '.join(map(str, surface['views']))} of each object, "
                     f"{surface['points']} points per surface, distances in GT bounding-box diagonals")
    ckpt = result.get("checkpoint", {})
    notes.append(f"network: {ckpt.get('encoder', '?')} encoder, iteration {ckpt.get('iteration', '?')} "
                 f"({result['run']}); {result.get('seconds', 0):.1f} s")
    return "\n".join([title, *lines, *notes])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
