"""How well a head is predicted from one photograph: the evaluation protocol of the head network.

One job: `evaluate_heads` scores predictions on held-out heads of a head dataset,
`mean_head_predictions` makes the baseline every figure is read against (the model's mean head),
`evaluate_head_run` scores a head network's run beside it (`eval_set`: as `zerolevel eval-set` asks,
with its table), and
`write_gallery` draws photograph, prediction and truth side by side.

Protocol, per test head (its first photograph, with the dataset's known camera: one view cannot fix
the distance, so the camera places the prediction, and the baseline is placed by the same camera):
- the prediction (`phorhum_predict.predict_head`, narrow-band marching cubes at `resolution`^3 over
  the head box) against the generated head (regenerated from its seed, so its face region is known);
- `samples` area-weighted points on each surface (the truth's without the parts of a piece inside
  another); distances are fractions of the true head's bounding-box diagonal;
- whole head: Chamfer (mean of the two mean nearest distances), F-score at 0.5% and 1%, normal
  consistency (mean |cos| both ways);
- face region (`HeadModel.region("face")`: the face in front of the ears, above the throat, with the
  eyes and lips): the truth's face samples, and the predicted samples whose nearest true sample is one;
  the same Chamfer, F-scores and normal consistency;
- albedo: PSNR (peak 1) of the predicted albedo at the truth's face samples against their albedo;
- silhouette IoU: the prediction's coverage in the photograph's camera against the photograph's mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..errors import InputError
from ..metrics import nearest_neighbours, sample_surface
from ..render.raycast import MeshRayCaster
from .dataset.heads import HeadSplit, head_sources, surface_samples
from .evaluate import EvalRequest
from .heads import Head, generate_head, load_model, mean_head

TAUS = (0.005, 0.01)


@dataclass
class HeadPrediction:
    """What a method predicts for one photograph: a mesh in head units and an albedo function."""

    mesh: trimesh.Trimesh
    albedo: Callable[[np.ndarray], np.ndarray]  # (M, 3) points -> (M, 3) albedo in [0, 1]

    @staticmethod
    def uniform(mesh: trimesh.Trimesh, colour: np.ndarray) -> "HeadPrediction":
        """A prediction of one albedo everywhere (the baselines that estimate none)."""
        colour = np.asarray(colour)
        return HeadPrediction(mesh, lambda points: np.broadcast_to(colour, (len(points), 3)))


def head_seeds(split: HeadSplit) -> dict[str, int]:
    """Each head's generator seed, from the dataset's seed and size (`dataset.heads.head_sources`)."""
    info = split.info
    total = sum(int(n) for n in info["splits"].values())
    return {s.id: int(s.seed) for s in head_sources(total, int(info["seed"]))}


def photograph(split: HeadSplit, index: int, view: int = 0) -> tuple[np.ndarray, Cameras]:
    """(S, S, 4) uint8 RGB + mask of a head's photograph, and its camera."""
    return split.rgba(np.array([index]), np.array([view]))[0], split.cameras(index)[view]


def network_predictions(net: Any, split: HeadSplit, indices: list[int], resolution: int = 128
                        ) -> list[HeadPrediction]:
    """The head network's predictions from the first photograph of each head."""
    return [network_prediction(net, *photograph(split, index), resolution) for index in indices]


def network_prediction(net: Any, image: np.ndarray, camera: Cameras, resolution: int = 128) -> HeadPrediction:
    """The head network's prediction from one (S, S, 4) uint8 photograph and its camera."""
    from .phorhum_predict import head_field, predict_head

    parameter = next(net.parameters())
    mesh = predict_head(net, image, camera=camera, resolution=resolution)
    camera = camera.to(device=parameter.device, dtype=parameter.dtype)
    batch = torch.from_numpy(image).to(parameter.device).permute(2, 0, 1)[None].to(parameter.dtype) / 255
    features = head_field(net, batch, camera).features

    def albedo(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = torch.from_numpy(np.asarray(points)).to(parameter.device, parameter.dtype)[None]
            return net.query(features, camera, p)[1][0].double().cpu().numpy()

    return HeadPrediction(mesh, albedo)


def mean_head_predictions(split: HeadSplit, indices: list[int], train: HeadSplit) -> list[HeadPrediction]:
    """The baseline: the model's mean head (identity and expression 0) where the camera puts every head,
    with the training heads' mean surface albedo everywhere."""
    mesh, colour = mean_head().mesh(), mean_albedo(train)
    return [HeadPrediction.uniform(mesh, colour) for _ in indices]


def mean_albedo(train: HeadSplit) -> np.ndarray:
    """(3,) the training heads' mean surface albedo: the colour of the baselines that estimate none."""
    return np.asarray(train.surface[:, :, 6:9]).reshape(-1, 3).mean(0)


def evaluate_heads(predictions: list[HeadPrediction], split: HeadSplit, indices: list[int],
                   samples: int = 40_000, seed: int = 0) -> list[dict[str, float]]:
    """The protocol's figures (module docstring) of each prediction, one dict per head."""
    seeds = head_seeds(split)
    model = load_model()
    results = []
    for prediction, index in zip(predictions, indices):
        head = generate_head(seeds[split.ids[index]], model)
        truth = _true_samples(head, model.region("face"), samples, seed)
        _, camera = photograph(split, index)
        results.append(score_head(prediction, truth, split.masks[index, 0] >= 128, camera, samples, seed))
    return results


def _true_samples(head: Head, face: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(count, 10): point, normal, albedo, face weight of samples of the true head's surface."""
    mesh = trimesh.Trimesh(head.vertices, head.faces, process=False)
    attributes = np.concatenate([head.albedo, face[:, None]], axis=1)
    return surface_samples(head, mesh, np.random.default_rng(seed), count, attributes)


def score_head(prediction: HeadPrediction, truth: np.ndarray, mask: np.ndarray, camera: Cameras,
               samples: int, seed: int, box: np.ndarray | None = None) -> dict[str, float]:
    """The figures of one prediction against the true samples (point, normal, albedo, face weight);
    with a (2, 3) `box`, only the prediction's samples inside it are scored (the truth's are already
    cut to it: `head_scans`), its silhouette whole."""
    if len(prediction.mesh.faces) == 0 or not prediction.mesh.area > 0:
        raise InputError("the prediction has no surface")
    points, normals = sample_surface(prediction.mesh, samples, seed + 1)
    if box is not None:
        inside = ((points >= box[0]) & (points <= box[1])).all(axis=1)
        if not inside.any():
            raise InputError("the prediction has no surface where the head is")
        points, normals = points[inside], normals[inside]
    lo, hi = truth[:, :3].min(0), truth[:, :3].max(0)
    scale = 1.0 / float(np.linalg.norm(hi - lo))
    true_face = truth[:, 9] > 0.5
    to_true, nearest = nearest_neighbours(truth[:, :3], points)
    to_pred, nearest_pred = nearest_neighbours(points, truth[:, :3])
    out = {}
    for region, pred_keep, true_keep in (("head", slice(None), slice(None)),
                                          ("face", true_face[nearest], true_face)):
        out.update(_surface_figures(region, to_true[pred_keep] * scale, to_pred[true_keep] * scale,
                                    np.abs(np.einsum("ij,ij->i", normals[pred_keep], truth[nearest[pred_keep], 3:6])),
                                    np.abs(np.einsum("ij,ij->i", truth[true_keep, 3:6],
                                                     normals[nearest_pred[true_keep]]))))
    albedo = prediction.albedo(truth[true_face, :3])
    mse = float(np.mean((albedo - truth[true_face, 6:9]) ** 2))
    out["albedo PSNR face"] = 10 * np.log10(1.0 / max(mse, 1e-12))
    coverage = MeshRayCaster(prediction.mesh, crease_deg=None).render(camera, supersample=1)["mask"][0] > 0.5
    out["silhouette IoU"] = float((coverage & mask).sum() / max((coverage | mask).sum(), 1))
    return out


def _surface_figures(region: str, to_true: np.ndarray, to_pred: np.ndarray, cos_pred: np.ndarray,
                     cos_true: np.ndarray) -> dict[str, float]:
    if len(to_true) == 0 or len(to_pred) == 0:
        return {f"Chamfer {region}": float("nan"), **{f"F@{t:.1%} {region}": 0.0 for t in TAUS},
                f"normal consistency {region}": float("nan")}
    out = {f"Chamfer {region}": float(0.5 * (to_true.mean() + to_pred.mean()))}
    for tau in TAUS:
        precision, recall = float(np.mean(to_true < tau)), float(np.mean(to_pred < tau))
        out[f"F@{tau:.1%} {region}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out[f"normal consistency {region}"] = float(0.5 * (cos_pred.mean() + cos_true.mean()))
    return out


def mean_figures(results: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over heads (NaNs left out)."""
    return {key: float(np.nanmean([r[key] for r in results])) for key in results[0]} if results else {}


FIGURES = ("F@0.5% face", "F@1.0% face", "Chamfer face", "normal consistency face", "F@0.5% head", "F@1.0% head",
           "Chamfer head", "normal consistency head", "albedo PSNR face", "silhouette IoU")


def evaluate_head_run(run: Any, dataset: Any, split: str = "test", heads: int | None = None,
                      samples: int = 40_000, device: str | torch.device | None = "cpu", resolution: int = 128,
                      gallery: str | None = None, gallery_heads: int = 4) -> dict[str, Any]:
    """`zerolevel eval-set` for a head network: its figures and the mean head's on the first `heads`
    heads of a head dataset split (all by default), per head and as means; `gallery`: a picture."""
    from .dataset.heads import load_head_split
    from .phorhum import PhorhumNet
    from .predict import load_model

    net = load_model(run, device or "cpu", network=PhorhumNet)
    scored, train = load_head_split(dataset, split), load_head_split(dataset, "train")
    indices = list(range(len(scored) if heads is None else min(heads, len(scored))))
    predictions = network_predictions(net, scored, indices, resolution)
    network = evaluate_heads(predictions, scored, indices, samples)
    mean = evaluate_heads(mean_head_predictions(scored, indices, train), scored, indices, samples)
    if gallery:
        write_gallery(predictions[:gallery_heads], scored, indices[:gallery_heads], gallery)
    return {"split": split, "heads": [scored.ids[i] for i in indices], "network": mean_figures(network),
            "mean head": mean_figures(mean), "per head": network, "per head, mean head": mean}


def eval_set(run: Any, dataset: Any, request: EvalRequest) -> tuple[dict[str, Any], str]:
    """`zerolevel eval-set` on a head network's run: (the JSON-ready result, its table); `request.views`
    is the first N heads, `points` the samples per surface, `gallery_objects` the heads drawn."""
    result = evaluate_head_run(run, dataset, split=request.split, heads=request.views, samples=request.points,
                               device=request.device, gallery=request.gallery, gallery_heads=request.gallery_objects)
    return result, format_head_table(result)


def format_head_table(result: dict[str, Any]) -> str:
    """The network's and the mean head's mean figures as a text table."""
    lines = [f"{len(result['heads'])} {result['split']} heads, each from its first photograph and camera",
             f"{'figure':<26}{'network':>10}{'mean head':>11}"]
    for key in FIGURES:
        lines.append(f"{key:<26}{result['network'][key]:>10.4g}{result['mean head'][key]:>11.4g}")
    return "\n".join(lines)


def write_gallery(predictions: list[HeadPrediction], split: HeadSplit, indices: list[int], path: Any) -> None:
    """Per head a row: the photograph, the prediction and the truth rendered in its camera, albedo-lit
    by a light along the view (written atomically)."""
    from PIL import Image

    from ..atomic import atomic_path

    seeds, rows = head_seeds(split), []
    for prediction, index in zip(predictions, indices):
        image, camera = photograph(split, index)
        truth = generate_head(seeds[split.ids[index]]).outer_mesh()
        row = [image[..., :3].astype(np.float64) / 255]
        truth_albedo = np.asarray(truth.visual.vertex_colors[:, :3], np.float64) / 255
        for mesh, colours in ((prediction.mesh, prediction.albedo(np.asarray(prediction.mesh.vertices))),
                              (truth, truth_albedo)):
            out = MeshRayCaster(mesh, crease_deg=None).render(camera, supersample=2, attributes=colours, ambient=0.35)
            row.append(out["attributes"][0] * out["image"][0][..., None] + (1 - out["mask"][0][..., None]))
        rows.append(np.concatenate(row, axis=1))
    picture = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
