"""A single-view network's prediction from 1 and from 3 views, fused (mean or max of the SDFs), and
refined by the tet-grid fit (`zerolevel predict --refine S`), scored against the dataset's truth.

For every object of the chosen splits (or the first --per-category of each category) and every ring offset k, the views are {k} (1 view) and
{k, k + V/3, k + 2V/3} (3 views, 120 degrees apart), or n views 360/n degrees apart (--view-sets). Rows:
- "predict": the network's mesh (1 view), or the views' predictions fused ("mean" / "max" of the SDF
  values, `learn.predict.fuse`);
- "refine <config> <modalities>": the mean-fused prediction refined for --seconds by the tet-grid fit
  (`learn.refine.refine`, schedule fitted to the budget) to the views' masks, or masks and normal maps
  (the dataset's own normal maps: what a perfect normal predictor would give; or, with
  --normals-run, a pix2pix run's predictions from the same images); <config> is
  RESOLUTIONS:LR[:W_NORMAL][:KEY=VALUE...], `learn.refine.REFINE` with those settings.
Scores, as `zerolevel eval-set`: voxel IoU on the dataset's 32^3 grid (`learn.evaluate.voxel_iou`),
F-score at 0.5%, 1% and 2% of the GT bounding-box diagonal (F@0.5% also per category) and Chamfer
(`metrics.evaluate`, 20000 points), averaged over (object, offset) pairs.

    zerolevel dataset --generate chair,table --count 12 --for tetnet -o /tmp/d
    zerolevel train tetnet /tmp/d -o /tmp/run --budget 240 --threads 1
    python benchmarks/predict_refine.py --data /tmp/d --run /tmp/run --seconds 20

Writes results/predict_refine.md and .json (`--name` changes the stem).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402
from singleview_tetnet import first_per_category, predicted_normals  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (zerolevel dataset --for tetnet)")
    parser.add_argument("--run", required=True, help="a tetnet run folder trained on it")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 5], help="ring offsets k (default 0 5)")
    parser.add_argument("--seconds", type=float, default=20.0, help="refine budget (default 20)")
    parser.add_argument("--configs", nargs="*", default=["32:0.05"],
                        help="refine settings RESOLUTIONS:LR[:W_NORMAL][:KEY=VALUE...] (TetSDFConfig fields), e.g. "
                             "32:0.05 32,64:0.05 32:0.05:0.3 32:0.1:w_prior=1 (default 32:0.05)")
    parser.add_argument("--per-category", type=int, default=None,
                        help="only the first N objects of each category of each split (default: all)")
    parser.add_argument("--modalities", nargs="*", default=["masks", "normals"], choices=["masks", "normals"])
    parser.add_argument("--normals-run", default=None,
                        help="a normals run (pix2pix): fit its normal maps predicted from the same images "
                             "instead of the dataset's")
    parser.add_argument("--view-sets", type=int, nargs="+", default=[1, 3],
                        help="views per set, evenly spread around the ring from offset k (default 1 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="predict_refine")
    return parser.parse_args(argv)


def _config(text: str):
    """TetSDFConfig of a --configs entry: REFINE with its resolutions, lr and further settings."""
    from dataclasses import replace

    from zerolevel.learn.refine import REFINE

    resolutions, lr, *rest = text.split(":")
    levels = tuple(int(r) for r in resolutions.split(","))
    settings = {"resolutions": levels, "level_shares": (1.0,) * len(levels), "lr": float(lr)}
    for item in rest:
        key, value = item.split("=") if "=" in item else ("w_normal", item)
        settings[key] = float(value)
    return replace(REFINE, **settings)


def _fits_normals(text: str) -> bool:
    """Whether a --configs entry sets the normal term's weight (a normals-only variant)."""
    return any(item.startswith("w_normal=") or "=" not in item for item in text.split(":")[2:])


def _objects(split, per_category: int | None) -> list[int]:
    """The split's objects, or the first `per_category` of each category."""
    if per_category is None:
        return list(range(len(split)))
    return first_per_category(list(split.categories), per_category)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)
    import numpy as np
    import torch

    from zerolevel.geometry.mesh import load_mesh
    from zerolevel.learn.dataset.folder import decode_normals, load_split
    from zerolevel.learn.evaluate import voxel_iou
    from zerolevel.learn.pix2pix import NormalsNet
    from zerolevel.learn.predict import fuse, load_model, network_outputs, output_mesh
    from zerolevel.learn.refine import input_scene, refine, ring_cameras
    from zerolevel.metrics import evaluate

    torch.set_num_threads(args.threads)
    net = load_model(args.run)
    normals_net = None if args.normals_run is None else load_model(args.normals_run, network=NormalsNet)
    size = net.config.image_size
    scores: dict[tuple, list[list[float]]] = {}
    categories: dict[tuple, list[str]] = {}  # the category of each row of scores[key]

    def score(key, mesh, voxels, gt, category, iterations=0):
        metrics = evaluate(mesh, gt, taus=(0.005, 0.01, 0.02), n_points=20000, seed=0)
        row = [voxel_iou(mesh.vertices, mesh.faces, voxels), *(metrics["fscore"][t] for t in ("0.005", "0.01", "0.02")),
               metrics["chamfer"], iterations]
        scores.setdefault(key, []).append(row)
        categories.setdefault(key, []).append(category)
        print(key, category, " ".join(f"{x:.4f}" for x in row), flush=True)

    for split_name in args.splits:
        split = load_split(args.data, split_name)
        count = split.cameras.K.shape[0]
        for i in _objects(split, args.per_category):
            voxels, gt = np.asarray(split.voxels[i], dtype=bool), load_mesh(split.mesh_path(i))
            category = split.categories[i]
            for k in args.offsets:
                for n in args.view_sets:
                    views = [(k + j * count // n) % count for j in range(n)]
                    images = [np.asarray(split.images[i, v]) for v in views]
                    cameras = ring_cameras(args.data, views, size)
                    outputs = network_outputs(net, images, cameras=cameras)
                    for how in (["mean", "max"] if n > 1 else ["mean"]):
                        score((n, "predict", how if n > 1 else "-"), output_mesh(net, fuse(outputs, how)), voxels, gt,
                              category)
                    for modality in args.modalities:
                        normals = (None if modality == "masks" else
                                   [np.asarray(decode_normals(split.normals[i, v])) for v in views]
                                   if normals_net is None else
                                   predicted_normals(normals_net, split, [i] * len(views), views))
                        scene = input_scene(images, cameras, normals, float(net.config.bounds))
                        for text in args.configs:
                            if modality == "masks" and _fits_normals(text):
                                continue
                            t0 = time.perf_counter()
                            refined = refine(net, fuse(outputs), scene, args.seconds, config=_config(text),
                                             progress=False, seed=0)
                            print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
                            score((n, f"refine {text}", modality), refined.mesh, voxels, gt, category,
                                  refined.result.iterations)
    rows = []
    names = sorted({c for values in categories.values() for c in values})
    for (n, what, how), values in sorted(scores.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        values, cats = np.asarray(values), np.asarray(categories[n, what, how])
        per_category = [float(values[cats == c, 1].mean()) for c in names]  # F@0.5%
        rows.append([n, what, how, len(values), *[float(x) for x in values.mean(axis=0)], *per_category])
    write_report(args.name, "Single-view prediction: fusion of views and refinement by the tet-grid fit",
                 "python benchmarks/predict_refine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 ["views", "mesh", "fusion / refine targets", "pairs", "IoU", "F@0.5%", "F@1%", "F@2%", "chamfer",
                  "iterations", *(f"F@0.5% {c}" for c in names)], rows,
                 notes=f"data {args.data} (splits {', '.join(args.splits)}), run {args.run}; ring offsets "
                       f"{args.offsets}; n views 360/n degrees apart; refine budget {args.seconds} s on "
                       f"{args.threads} thread(s), a shared machine (the iteration counts vary with its load); "
                       + ("normals: the dataset's own normal maps" if args.normals_run is None else
                          f"normals: predicted from the same images by the normals run {args.normals_run}"))


if __name__ == "__main__":
    main()
