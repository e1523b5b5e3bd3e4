"""Ablations behind a single-view network's training defaults: validation IoU against training time.

`--network` picks the registry's network (tetnet, the default; sdfnet; softras). Each variant (a name
and settings of the network's training config, `zerolevel train NETWORK --set`) trains from scratch
(seed 0) on the same generated dataset, made `--for tetnet` (128^2, varied lighting, normal maps and
the lighting record; cached as `singleview_tetnet.py`'s), for the same wall-clock budget, and is validated every `--eval-every`
iterations on the val split (`--val-views` evenly spaced ring views per object; voxel IoU by the
published protocol, `learn.evaluate.evaluate_iou`). `--jobs` variants train at once, each on
`--threads` threads (on 2 cores: 2 jobs of 1 thread; torch's threads wait on each other when more
threads than cores run, so do not oversubscribe). The table gives per variant its iterations, the
median step and the validation IoU at each evaluation and at the end; compare rows of one run only.

    python benchmarks/singleview_ablation.py --count 60 --budget 1500 --jobs 2 --threads 1   # 4 variants, ~55 min
    python benchmarks/singleview_ablation.py --variants default carve=w_carve=1 --budget 600
    python benchmarks/singleview_ablation.py --network sdfnet --variants default carve-distance --budget 900
    python benchmarks/singleview_ablation.py --count 4 --categories chair table --budget 20   # a quick check

A variant is NAME or NAME=KEY=VALUE,KEY=VALUE (the network's predefined names below, or new ones).
Writes results/<name>.md and .json (default stem <network>_ablation). `tetnet_ablation.py` is this
script for the tet network (the commands of its earlier results files).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402
from singleview import add_run_options, make_dataset  # noqa: E402

# Variants studied so far, per network (settings that differ from its training config's defaults).
TETNET_VARIANTS = {
    "default": {},
    "silhouette-x5": {"w_mask": 5.0, "w_shrink": 0.5, "w_expand": 0.5},
    "silhouette-x1": {"w_mask": 1.0, "w_shrink": 0.1, "w_expand": 0.1},  # the tet fit's weights
    "carve": {"w_carve": 20.0},               # vertices outside the object's visual hull pushed out
    "no-carve": {"w_carve": 0.0},              # the default before tetnet_carve_long.md
    "carve-wide": {"w_carve": 20.0, "channels": "128,64,32", "norm": "group", "lr": 1e-3},
    "basis-128": {"basis": 128},              # + a linear full-lattice term (tetnet.py)
    "pixel-16": {"pixel": 16},                # + pixel-aligned features (tetnet.py)
    "wide-96": {"channels": "96,48,24"},       # the decoder's lattices 1.5x wider
    "lr-1e-3": {"lr": 1e-3},
    "conv-head": {"head": "conv", "channels": "64,32,16,8"},  # the finest lattice convolved (tetnet.py)
    "views-1": {"views": 1},                 # each sample rendered in its input view only
    "views-4": {"views": 4},                 # each sample rendered in 4 of its views
    "batch-8-views-4": {"batch_size": 8, "views": 4},
    "he-init": {"init": "he"},                 # He et al.'s start (tetnet.py `he_init`)
    "pix2pix-encoder": {"encoder": "pix2pix"},  # pix2pix's encoder levels, from scratch (encoders.py)
    # pretrained: pix2pix-pretrained=encoder=pix2pix,encoder_from=RUNS/normals (a normals run, its path)
}
SDFNET_VARIANTS = {
    "default": {},
    "carve": {"w_carve": 20.0},                # the hull carve, nodes pushed to +0.1 cell (a plateau)
    "carve-distance": {"w_carve": 20.0, "carve_floor": "distance"},  # ... past their distance to the hull
    "coarse-only": {"fine_at": 10**9, "fine_at_budget": None},  # the fine level never trained
    "both-levels": {"fine_at": 0},             # both levels from the first step
    "pix2pix-encoder": {"encoder": "pix2pix"},
}
VARIANTS = {"tetnet": TETNET_VARIANTS, "sdfnet": SDFNET_VARIANTS, "softras": {"default": {}}}
DEFAULT_VARIANTS = {"tetnet": ["default", "silhouette-x5", "silhouette-x1", "carve"],
                    "sdfnet": ["default", "carve", "carve-distance"], "softras": ["default"]}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(VARIANTS), default="tetnet", help="the network (default tetnet)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="NAME or NAME=KEY=VALUE,... (predefined: "
                             + "; ".join(f"{net}: {', '.join(v)}" for net, v in VARIANTS.items()) + ")")
    parser.add_argument("--budget", type=float, default=1500.0, help="training seconds per variant (default 1500)")
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--val-views", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once (default 2)")
    add_run_options(parser, "<network>_ablation")
    parser.set_defaults(count=60, threads=1, name=None)
    args = parser.parse_args(argv)
    args.variants = args.variants or DEFAULT_VARIANTS[args.network]
    args.name = args.name or f"{args.network}_ablation"
    return args


def parse_variant(text: str, network: str = "tetnet") -> tuple[str, dict[str, str]]:
    """NAME (predefined for `network`) or NAME=KEY=VALUE,KEY=VALUE -> (name, settings as text); a VALUE
    may hold commas (a tuple's items)."""
    name, _, rest = text.partition("=")
    if not rest:
        known = VARIANTS[network]
        if name not in known:
            raise SystemExit(f"unknown {network} variant {name!r}: predefined are {', '.join(known)}, "
                             "or NAME=KEY=VALUE,...")
        return name, {k: "none" if v is None else str(v) for k, v in known[name].items()}
    # a comma starts a new pair only before KEY=: a tuple's value keeps its own (channels=96,48,24)
    return name, dict(pair.split("=", 1) for pair in re.split(r",(?=\w+=)", rest))


def train_variant(job: tuple) -> dict:
    """One variant's budget run (in a worker process): its log's iterations, step times and IoUs."""
    name, settings, data, run_dir, args = job
    import torch

    from zerolevel import methods
    from zerolevel.optim.loop import read_log
    from zerolevel.settings import apply_overrides

    torch.set_num_threads(args.threads)
    parts = methods.get(args.network, "train").parts()
    train = parts.train
    config = apply_overrides(parts.config(iterations=10**9, budget_s=args.budget, eval_every=args.eval_every,
                                               val_views=args.val_views, checkpoint_every=10**9, log_every=1,
                                               seed=args.seed), settings)
    result = train(data, run_dir, config, "cpu", progress=False, threads=args.threads)
    log = read_log(Path(run_dir) / "log.jsonl")
    times = [row["time"] for row in log if "loss" in row]
    steps = [b - a for a, b in zip(times[1:], times[2:])]  # the first step warms up
    ious = [(row["iter"], row["val_iou"]) for row in log if "val_iou" in row]
    print(f"{name}: {result.summary()}", flush=True)
    return {"variant": name, "settings": settings, "iterations": result.iterations, "seconds": result.seconds,
            "step_s": statistics.median(steps) if steps else None, "val_iou": ious}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)
    from zerolevel.learn.dataset.settings import DatasetSettings
    from zerolevel.cli.learning import dataset_defaults

    variants = [parse_variant(text, args.network) for text in args.variants]
    data = make_dataset(args, DatasetSettings(**dataset_defaults("tetnet")), "singleview_tetnet")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{args.network}-ablation-") as tmp:
        runs = args.runs or Path(tmp)
        jobs = [(name, settings, data, str(runs / f"variant{i}"), args) for i, (name, settings) in enumerate(variants)]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(train_variant, jobs)
    checkpoints = sorted({it for r in results for it, _ in r["val_iou"] if it % args.eval_every == 0})
    columns = ["variant", "settings", "iterations", "step s", *[f"IoU @{it}" for it in checkpoints], "IoU end"]
    rows = []
    for r in results:
        by_iter = dict(r["val_iou"])
        rows.append([r["variant"], json.dumps(r["settings"]) if r["settings"] else "-", r["iterations"],
                     None if r["step_s"] is None else round(r["step_s"], 2),
                     *[None if it not in by_iter else round(by_iter[it], 4) for it in checkpoints],
                     round(r["val_iou"][-1][1], 4) if r["val_iou"] else None])
    script = Path(sys.argv[0]).name if argv is None else "singleview_ablation.py"
    command = f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = (f"Network {args.network}. Data {data} ({args.count} objects per category); every variant from scratch, seed {args.seed}, "
             f"{args.budget:g} s of training, {args.jobs} at once on {args.threads} thread(s) each; validation IoU "
             f"on the val split, {args.val_views} views per object, every {args.eval_every} iterations and at the "
             f"end of the budget ('IoU end'). Benchmark wall time {time.perf_counter() - t_start:.0f} s.")
    title = {"tetnet": "Tet-SDF network", "sdfnet": "SDFDiff's single-view network", "softras": "SoftRas's network"}
    write_report(args.name, f"{title[args.network]}: training ablations (validation IoU against iterations, same budget)",
                 command, columns, rows, notes=notes)
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
