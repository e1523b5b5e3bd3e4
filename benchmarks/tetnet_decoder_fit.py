"""How fast TetNet's decoder fits dense 3D targets: a quick screen of decoder designs, no rendering.

Each variant (`TetNetConfig` settings and an Adam lr) is the network's decoder fed a free 512-d code
per training object (an auto-decoder: no encoder, no images), trained for --seconds by L1 regression
to each object's visual-hull SDF truncated to +-3 cells. The hull is carved from all the object's ring
masks on the grid's lattice (masks only: the training's own supervision, made dense). Reported per
variant: steps, the L1 and the voxel IoU (published protocol, against the dataset's truth) of every
8th training object's mesh. What it measures is the decoder's fitting speed per step and per second,
which the tet network's learning is limited by (issue 17's notes). Its IoU is capped by the hull's
own, far below the true SDF's where ring views cannot carve (under tabletops, between chair legs):
rank variants by the L1, and confirm in a training ablation (`tetnet_ablation.py`).

    python benchmarks/tetnet_decoder_fit.py --data /tmp/d360 --seconds 240 \\
        --variants default lr-1e-3=lr=0.001 group=norm=group,lr=0.001

A variant is NAME or NAME=KEY=VALUE,... (KEY: `lr` or a `TetNetConfig` field). `--jobs` variants run at
once, each on `--threads` threads. Writes results/<name>.md and .json (default tetnet_decoder_fit).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402
from singleview import add_run_options, make_dataset  # noqa: E402

TRUNCATION = 3.0  # cells


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(parser, "tetnet_decoder_fit")
    parser.add_argument("--variants", nargs="+", default=["default", "group=norm=group"])
    parser.add_argument("--seconds", type=float, default=240.0, help="fitting time per variant (default 240)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2, help="variants fitted at once (default 2)")
    parser.set_defaults(threads=1)
    return parser.parse_args(argv)


def hull_targets(split, net) -> "torch.Tensor":
    """(N, vertices) the visual-hull SDF of each object on the net's lattice, truncated, in world units
    (the hull: `tetnet_train.hull_outside`, the carve term's)."""
    import numpy as np
    import torch
    from scipy import ndimage

    from zerolevel.learn.tetnet_train import hull_outside

    n = net.config.grid + 1
    targets = []
    for outside in hull_outside(split, net.grid_vertices):
        inside = ~outside.reshape(n, n, n).numpy()
        cells = np.where(inside, 0.5 - ndimage.distance_transform_edt(inside),
                         ndimage.distance_transform_edt(~inside) - 0.5)
        targets.append(torch.from_numpy(np.clip(cells, -TRUNCATION, TRUNCATION).reshape(-1)).float())
    return torch.stack(targets) * net.grid.cell


def fit_variant(job: tuple) -> dict:
    """One variant's fit (in a worker process): steps, L1 and IoU on every 8th training object."""
    name, settings, data, args = job
    import numpy as np
    import torch

    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.evaluate import voxel_iou
    from zerolevel.learn.tetnet import TetNet, TetNetConfig
    from zerolevel.settings import apply_overrides

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    settings = dict(settings)
    lr = float(settings.pop("lr", 3e-4))
    net = TetNet.from_config(apply_overrides(TetNetConfig(), settings))
    split = load_split(data, "train")
    targets = hull_targets(split, net)
    codes = torch.nn.Embedding(len(split), net.config.latent)
    torch.nn.init.normal_(codes.weight, 0.0, 0.1)
    optimizer = torch.optim.Adam([*net.decoder.parameters(), *codes.parameters()], lr=lr)
    band = TRUNCATION * net.grid.cell
    generator = torch.Generator().manual_seed(args.seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        objects = torch.randint(0, len(split), (args.batch,), generator=generator)
        loss = (net.decoder(codes(objects)).clamp(-band, band) - targets[objects]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    seconds = time.perf_counter() - start
    with torch.no_grad():
        objects = list(range(0, len(split), 8))
        values = net.decoder(codes(torch.tensor(objects)))
        l1 = float((values.clamp(-band, band) - targets[objects]).abs().mean())
        ious = []
        for i, v in zip(objects, values):
            verts, faces = net.mesh(v)
            ious.append(voxel_iou(verts.double().numpy(), faces.numpy(), np.asarray(split.voxels[i], dtype=bool)))
    print(f"{name}: {steps} steps in {seconds:.0f} s, L1 {l1:.5f}, IoU {np.mean(ious):.4f}", flush=True)
    return {"variant": name, "settings": {"lr": lr, **settings}, "steps": steps, "seconds": seconds,
            "l1": l1, "iou": float(np.mean(ious))}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)
    from singleview_ablation import parse_variant  # noqa: E402  (predefined names: the training ablation's)

    from zerolevel.cli.learning import dataset_defaults
    from zerolevel.learn.dataset.settings import DatasetSettings

    variants = [parse_variant(text) for text in args.variants]
    data = make_dataset(args, DatasetSettings(**dataset_defaults("tetnet")), "singleview_tetnet")
    jobs = [(name, settings, data, args) for name, settings in variants]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(fit_variant, jobs)
    rows = [[r["variant"], json.dumps(r["settings"]), r["steps"], round(r["seconds"] / r["steps"], 3), round(r["l1"], 5),
             round(r["iou"], 4)] for r in results]
    command = "python benchmarks/tetnet_decoder_fit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = (f"Data {data} ({args.count} objects per category, the train split); every variant from seed "
             f"{args.seed}, {args.seconds:g} s, batch {args.batch}, {args.jobs} at once on {args.threads} "
             f"thread(s) each. L1: mean |clamp(f) - target| over the lattice of every 8th training object, "
             f"world units (a cell is 1.1 / grid); IoU: their meshes against the dataset's voxels.")
    write_report(args.name, "TetNet's decoder fitting the training objects' visual-hull SDFs (no rendering)",
                 command, ["variant", "settings", "steps", "step s", "L1", "IoU"], rows, notes=notes)
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
