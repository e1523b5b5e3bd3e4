"""Evaluation of a normal-map network (`pix2pix.NormalsNet`) on a dataset split.

One job: the angular error of predicted normal maps against the split's, and of a trivial baseline,
as the surface-normal literature reports it (Eigen & Fergus 2015, Wang et al. 2015): the mean and
median angle in degrees over the foreground pixels of every evaluated (object, view), and the
percentage of those pixels within 11.25, 22.5 and 30 degrees. `evaluate_normals_run` scores a run
folder, `format_normals_table` prints it, `eval_set` is both for `zerolevel eval-set` on a normals run.

The baseline (`mean_normal_maps`): the per-pixel mean of the TRAIN split's normal maps, normalised,
one map per ring view: the views are the same ring cameras for every object and the normals are in
world space, so a pixel's typical normal depends on the view (a mean over views would mix normals
seen from opposite sides). Where no train object covers a pixel, its normal faces the camera. It is
the same for every input image; a network that does not beat it has not learnt to read the shading.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .dataset.folder import decode_normals
from .evaluate import EvalRequest, view_indices
from .sampling import split_images, split_normals

FORMAT = "zerolevel-eval-normals"
THRESHOLDS = (11.25, 22.5, 30.0)  # degrees: the surface-normal literature's


def angular_errors(predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K,) float64 angles in degrees between (..., 3) predicted and target normals at the pixels
    where the target is not 0 (its foreground), by atan2(|p x t|, p . t) (exact near 0 degrees); a
    zero prediction there counts as 90 degrees."""
    p = np.asarray(torch.as_tensor(predicted).detach().cpu(), dtype=np.float64).reshape(-1, 3)
    t = np.asarray(torch.as_tensor(target).detach().cpu(), dtype=np.float64).reshape(-1, 3)
    keep = np.any(t != 0, axis=1)
    p, t = p[keep], t[keep] / np.linalg.norm(t[keep], axis=1, keepdims=True)
    angles = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, t), axis=1), np.sum(p * t, axis=1)))
    return np.where(np.linalg.norm(p, axis=1) > 1e-12, angles, 90.0)


def error_stats(errors: np.ndarray) -> dict[str, Any]:
    """{"pixels", "mean", "median" (degrees), "within" {"11.25": %, "22.5": %, "30": %}} of (K,) angles;
    the values are None when there are no pixels."""
    errors = np.asarray(errors, dtype=np.float64)
    empty = errors.size == 0
    return {"pixels": int(errors.size), "mean": None if empty else float(errors.mean()),
            "median": None if empty else float(np.median(errors)),
            "within": {f"{t:g}": None if empty else float(100 * np.mean(errors < t)) for t in THRESHOLDS}}


def mean_normal_maps(split: Any, chunk: int = 64) -> np.ndarray:
    """(V, S, S, 3) float32 baseline normal maps of a split with normal maps (N, V, S, S, 3) int8: per
    view and pixel the mean of its objects' normals, normalised; the camera-facing normal where that
    mean is 0 (no object there). Summed in chunks, so a memory-mapped split is never copied whole."""
    total = np.zeros(split.normals.shape[1:], dtype=np.float64)
    for start in range(0, len(split.normals), chunk):
        total += decode_normals(split.normals[start:start + chunk]).sum(axis=0)
    length = np.linalg.norm(total, axis=-1, keepdims=True)
    facing = -split.cameras.forward.double().cpu().numpy()[:, None, None, :]  # (V, 1, 1, 3) towards the camera
    return np.where(length > 1e-9, total / np.maximum(length, 1e-9), facing).astype(np.float32)


@torch.no_grad()
def normal_errors(net: torch.nn.Module, split: Any, view_ids: np.ndarray, objects: int | None = None,
                  batch_size: int = 32, baseline: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Angular errors (degrees) over the foreground pixels of the split's first `objects` objects
    (None: all) in the views `view_ids`: the network's (run in eval mode, its mode restored) and,
    given (V, S, S, 3) `baseline` maps, theirs on the same pixels (else None)."""
    if getattr(split, "normals", None) is None:
        raise InputError("the evaluated split has no normal maps")
    n_obj = len(split) if objects is None else min(int(objects), len(split))
    obj, vid = np.repeat(np.arange(n_obj), len(view_ids)), np.tile(np.asarray(view_ids, dtype=np.int64), n_obj)
    parameter = next(net.parameters())
    was_training = net.training
    net.eval()
    ours, theirs = [], []
    try:
        for start in range(0, len(obj), batch_size):
            o, v = obj[start:start + batch_size], vid[start:start + batch_size]
            target = split_normals(split, o, v, "cpu", torch.float64)
            rotations = split.cameras.R[torch.as_tensor(v)].to(parameter.device)
            predicted = net.world_normals(split_images(split, o, v, parameter.device, parameter.dtype), rotations)
            ours.append(angular_errors(predicted, target))
            if baseline is not None:
                theirs.append(angular_errors(baseline[v], target))
    finally:
        net.train(was_training)
    return np.concatenate(ours), (np.concatenate(theirs) if baseline is not None else None)


def evaluate_normals_run(run: str | Path, dataset: str | Path, split: str = "test", views: int | None = None,
                         batch_size: int = 32, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Score a trained normals network on a split of a dataset folder beside the mean-normal baseline.

    Args:
        run: a run folder or its checkpoint.pt (`zerolevel train normals`).
        dataset: the dataset folder (version 2: with normal maps); its train split gives the baseline.
        split: the evaluated split; views: per object, evenly spaced from view 0 (None: all).
    Returns:
        A JSON-ready dict: "format", "run", "dataset", "split", "checkpoint" {"iteration", "image_size"},
        "objects", "views" (ids), "network" and "baseline" (`error_stats` each), "thresholds", "seconds".
    Raises:
        InputError: a missing or foreign run, a dataset without normal maps, an empty split, a network
            of another image size.
    """
    from .dataset.folder import load_split
    from .pix2pix import NormalsNet
    from .predict import load_run, network_from_run

    start = time.perf_counter()
    payload = load_run(run)
    net = network_from_run(payload, run, device, network=NormalsNet)
    test, train = load_split(dataset, split, normals=True), load_split(dataset, "train", normals=True)
    size = test.images.shape[2]
    if net.config.image_size != size:
        raise InputError(f"the network takes {net.config.image_size}x{net.config.image_size} images, this "
                         f"dataset's are {size}x{size}", dataset)
    if len(test) == 0 or len(train) == 0:
        raise InputError(f"the {'train' if len(test) else split} split has no objects", dataset)
    view_ids = view_indices(test.images.shape[1], views)
    ours, theirs = normal_errors(net, test, view_ids, batch_size=batch_size, baseline=mean_normal_maps(train))
    return {"format": FORMAT, "run": str(run), "dataset": str(dataset), "split": split,
            "checkpoint": {"iteration": int(payload["iteration"]), "image_size": size},
            "objects": len(test), "views": view_ids.tolist(), "thresholds": list(THRESHOLDS),
            "network": error_stats(ours), "baseline": error_stats(theirs),
            "seconds": round(time.perf_counter() - start, 2)}


def eval_set(run: str | Path, dataset: str | Path, request: EvalRequest) -> tuple[dict[str, Any], str]:
    """`zerolevel eval-set` on a normals run: (the JSON-ready result, its table); InputError for a
    --gallery, which draws meshes."""
    if request.gallery:
        raise InputError("--gallery does not apply to a normals network")
    result = evaluate_normals_run(run, dataset, split=request.split, views=request.views,
                                  batch_size=request.batch_size, device=request.device)
    return result, format_normals_table(result)


def format_normals_table(result: dict[str, Any]) -> str:
    """An aligned text table of an `evaluate_normals_run` result: the network's row and the baseline's."""
    header = ["", "mean", "median"] + [f"< {t:g}" for t in result["thresholds"]]

    def row(name: str, stats: dict[str, Any]) -> list[str]:
        return [name, _deg(stats["mean"]), _deg(stats["median"])] + [_pct(v) for v in stats["within"].values()]

    rows = [header, row("network", result["network"]), row("mean normal map", result["baseline"])]
    widths = [max(len(r[k]) for r in rows) for k in range(len(header))]
    lines = ["  ".join(t.ljust(w) if k == 0 else t.rjust(w) for k, (t, w) in enumerate(zip(r, widths))) for r in rows]
    views = result["views"]
    which = "all" if len(views) > 1 and views == list(range(len(views))) else ", ".join(map(str, views))
    title = (f"{result['split']} split of {result['dataset']}: {result['objects']} objects, {len(views)} views each "
             f"({which}); angular error of world-space normals over {result['network']['pixels']} foreground "
             f"pixels (degrees; < t: % of pixels)")
    notes = ["mean normal map: per view, the mean of the train split's normal maps (camera-facing where no "
             "object covers the pixel), the same for every input",
             f"network: iteration {result['checkpoint']['iteration']} ({result['run']}); {result['seconds']:.1f} s"]
    return "\n".join([title, *lines, *notes])


def _deg(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"
