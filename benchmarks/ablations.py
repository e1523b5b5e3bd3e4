"""The studies behind the methods' default settings: each study fits one rendered scene with a few
variants of one setting (as `fit --set` would) and scores each against the ground truth. The
settings' comments in `zerolevel.recon` cite these rows. Writes results/ablations.md and .json;
a run of some studies keeps the rows of the others (each row names its invocation).

    python benchmarks/ablations.py                       # every study (~20 min on 2 cores)
    python benchmarks/ablations.py --studies tetsdf_lr sdfdiff_images
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _report import RESULTS_DIR, previous_invocations, write_report  # noqa: E402
from multiview import GROUPS, MESHES, SHARED, make_scene  # noqa: E402

COLUMNS = ["study", "variant", "settings", "iterations", "optimisation s", "chamfer", "F@0.5%", "F@0.25%", "run"]


@dataclass(frozen=True)
class Study:
    """One scene, one method, variants of its settings: name -> (`--set` settings, iterations)."""

    mesh: str
    views: int
    res: int
    observations: str  # "normals" (normal maps + masks) or "shading" (3 known lights + masks)
    method: str
    variants: dict


SN = "supernormal"
STUDIES = {
    "supernormal_patches": Study("rocker-arm", 32, 256, "normals", SN, {
        "256 patches x 800 it.": ({"patches_per_iter": "256"}, 800),
        "1024 patches x 300 it. (default)": ({}, 300)}),
    "supernormal_lr": Study("rocker-arm", 32, 256, "normals", SN, {
        "table 1e-2, network 1e-2": ({"lr_table": "1e-2"}, 400),
        "table 3e-2, network 1e-2 (default)": ({}, 400)}),
    "supernormal_variance": Study("rocker-arm", 32, 256, "normals", SN, {
        "lr_variance 5e-3": ({"lr_variance": "5e-3"}, 200),
        "lr_variance 1e-3 (default)": ({}, 200)}),
    "supernormal_levels": Study("rocker-arm", 32, 256, "normals", SN, {
        "a level every 40 it.": ({"levels_every": "40"}, 300),
        "a level every 10 it. (default)": ({}, 300)}),
    "supernormal_weight_norm": Study("rocker-arm", 32, 256, "normals", SN, {
        "plain layers": ({"weight_norm": "false"}, 200),
        "weight-normalised (default)": ({}, 200)}),
    "sdfdiff_lr": Study("spot", 32, 256, "shading", "sdfdiff", {
        "flat 0.5 voxel": ({"lr": "0.5", "lr_decay_per_level": "1"}, 1000),
        "flat 0.1 voxel": ({"lr": "0.1", "lr_decay_per_level": "1"}, 1000),
        "flat 0.05 voxel": ({"lr": "0.05", "lr_decay_per_level": "1"}, 1000),
        "flat 0.05 voxel, 300 it.": ({"lr": "0.05", "lr_decay_per_level": "1"}, 300),
        "0.4 / 1.6 per level (default)": ({}, 1000),
        "0.4 / 1.6 per level (default), 300 it.": ({}, 300)}),
    "sdfdiff_images": Study("spot", 16, 128, "normals+images", "sdfdiff", {
        "normals + masks (default)": ({}, 100),
        "normals + masks + shaded images": ({"image_with_normals": "true"}, 100)}),
    "tetsdf_lr": Study("spot", 16, 128, "normals", "tetsdf", {
        f"lr {lr}": ({"lr": lr, "resolutions": "32", "level_shares": "1"}, 100)
        for lr in ("0.02", "0.05", "0.1", "0.2", "0.5")}),
    "tetsdf_lr_decay": Study("lee_perry_smith_head", 32, 256, "normals", "tetsdf", {
        f"/ {d} per level": ({"lr_decay_per_level": d}, 600) for d in ("1.0", "1.6", "2.5")}),
    "tetsdf_eikonal": Study("nefertiti", 16, 128, "normals", "tetsdf", {
        "within 2 cells of zero": ({"eikonal_cells": "2"}, 600),
        "the whole band (default)": ({}, 600)}),
}


def scene_of(study: Study):
    """The study's scene and ground truth (holes capped, as the multi-view benchmark renders them)."""
    from zerolevel.geometry.mesh import close_holes, load_mesh

    gt = close_holes(load_mesh(SHARED / MESHES[study.mesh], groups=GROUPS.get(study.mesh)))
    if study.observations == "normals+images":
        from zerolevel.pipeline import render_scene
        return gt, render_scene(gt, views=study.views, resolution=study.res, progress=False)
    return gt, make_scene(gt, study.observations, study.views, study.res)


def run_variant(study: Study, gt, scene, settings: dict, iters: int) -> list:
    from zerolevel.metrics import evaluate
    from zerolevel.optim.loop import LoopConfig, run_loop
    from zerolevel.pipeline import make_fitter

    fit = make_fitter(study.method, scene, iters, settings=settings)
    with tempfile.TemporaryDirectory() as out:
        result = run_loop(fit, out, LoopConfig(iters=iters, progress=False), name=study.method)
    m = evaluate(fit.extract(256), gt, n_points=100_000)
    return [iters, round(result.seconds, 1), round(m["chamfer"], 5), round(m["fscore"]["0.005"], 4),
            round(m["fscore"]["0.0025"], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    earlier = previous_invocations("ablations")
    run_id = len(earlier) + 1
    rows = []
    t0 = time.perf_counter()
    for name in args.studies:
        study = STUDIES[name]
        if not (SHARED / MESHES[study.mesh]).is_file():
            print(f"{MESHES[study.mesh]} missing from {SHARED}; skipping {name}")
            continue
        gt, scene = scene_of(study)
        for variant, (settings, iters) in study.variants.items():
            text = " ".join(f"{k}={v}" for k, v in settings.items()) or "-"
            rows.append([name, variant, text, *run_variant(study, gt, scene, settings, iters), run_id])
            print(rows[-1], flush=True)
    path = RESULTS_DIR / "ablations.json"
    if path.is_file():  # keep the other studies' rows
        done = set(args.studies)
        rows = [r for r in json.loads(path.read_text())["rows"] if r[0] not in done] + rows
        rows.sort(key=lambda r: list(STUDIES).index(r[0]) if r[0] in STUDIES else len(STUDIES))
    describe = "; ".join(f"{n}: {s.method} on {s.mesh}, {s.views} views at {s.res}^2, {s.observations}"
                         for n, s in STUDIES.items())
    write_report("ablations", "Ablations behind the default settings", "python benchmarks/ablations.py "
                 + " ".join(sys.argv[1:]), COLUMNS, rows, earlier=earlier,
                 notes=(f"Scenes as `benchmarks/multiview.py` renders them (holes capped); {args.threads} torch "
                        f"threads; F-score at 0.5% / 0.25% of the GT bounding-box diagonal, 100k points per "
                        f"surface, extraction at 256^3 (the tet grid meshes its own). \"run\" is the "
                        f"invocation (listed above) that wrote the row. Studies: {describe}. This run: "
                        f"{time.perf_counter() - t0:.0f} s."))


if __name__ == "__main__":
    main()
