"""A 3D head from one photograph (PHORHUM, as the thesis adapts it to heads), on 2 CPU cores: the
head network after a wall-clock training budget, beside the model's mean head (issue 18).

1. Data: `write_head_dataset(--count heads)` as `zerolevel dataset --generate heads` makes it (4
   photographs per head at 128^2, 80/10/10 split by identity), cached outside the repository (`--data`,
   default `<system temp>/zerolevel-bench/phorhum-<count>-seed<seed>`); a rerun reuses it.
2. Rows (`--rows`):
   - "mean head": the model's mean head placed by each photograph's camera, the training heads' mean
     albedo (`phorhum_eval.mean_head_predictions`);
   - "phorhum": `learn.phorhum_train` with its defaults (`--set KEY=VALUE` overrides any
     `PhorhumTrainConfig` field of the network rows), trained from scratch (seed 0, no validation) for
     `--budget` wall-clock seconds of its loop, the decay (x0.3) after 0.75 of the budget;
   - "phorhum, no rendering losses": the same with render_heads=0 (the ablation of the sphere-traced
     patch losses);
   - "phorhum, sphere prior": the same with base=sphere (the ablation of the mean head's SDF as the
     distance's prior: the network's first design, a residual over a sphere's distance);
   - "tet fit, one view": the per-image fit baseline (`learn.head_fit`): Wu et al.'s tet-grid fit of
     the photograph's mask and its ground-truth normal map, from the mean head, `--fit-seconds` per
     head; the training heads' mean albedo.
   `--jobs J` trains J network rows at once (each on `--threads` threads; for side-by-side ablations:
   the rows then share the machine alike); the scoring follows, one row after another.
3. Scores (`phorhum_eval.evaluate_heads`): the first `--test-heads` test heads, each from its first
   photograph with the dataset's camera; Chamfer, F@0.5% / F@1% (of the true head's bounding-box
   diagonal) and normal consistency over the whole head and over the face region, the albedo PSNR on
   the face, the silhouette IoU; means over the heads.
4. Real scans (`--scans`, default ../shared/data/meshes; skipped without it): Lee Perry-Smith's head
   and Nefertiti, placed in the head frame and photographed by the dataset's rules
   (`learn.head_scans`), every row scored on them by the same protocol within the mean head's box;
   written to results/<name>_scans.md.

    python benchmarks/phorhum.py            # the command of record: 400 heads, 3600 s per network row
    python benchmarks/phorhum.py --reuse --runs RUNS    # score the finished runs in RUNS again
    python benchmarks/phorhum.py --count 8 --budget 20 --test-heads 2 --name scratch_phorhum   # quick check
    python benchmarks/phorhum.py --rows mean phorhum phorhum-sphere --budget 720 --jobs 2 --threads 1 \
        --name phorhum_prior                                         # the prior's ablation, 12 min a row

Writes results/<name>.md and .json, and a picture of the first test heads' predictions
(<name>_gallery.png for the "phorhum" row, <name>_gallery_<row>.png for the others: photograph, predicted
albedo-coloured mesh, the truth, each rendered in the photograph's camera).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402

ROWS = ("mean", "tetfit", "phorhum", "phorhum-no-render", "phorhum-sphere")
TITLES = {"mean": "mean head", "tetfit": "tet fit, one view (mask + GT normals)", "phorhum": "phorhum",
          "phorhum-no-render": "phorhum, no rendering losses", "phorhum-sphere": "phorhum, sphere prior"}
ROW_SETTINGS = {"phorhum": {}, "phorhum-no-render": {"render_heads": 0}, "phorhum-sphere": {"base": "sphere"}}
DECAY_AT_BUDGET = 0.75
SHARED_MESHES = HERE.parent.parent / "shared" / "data" / "meshes"
# Real scans nobody generated (../shared/data/SOURCES.md): file, the scan's up axis, where its face looks
SCANS = {"Lee Perry-Smith": ("lee_perry_smith_head.obj", (0, 1, 0), (0, 0, 1)),
         "Nefertiti": ("nefertiti.obj", (0, 0, 1), (0, -1, 0))}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["mean", "tetfit", "phorhum"], choices=ROWS)
    parser.add_argument("--count", type=int, default=400, help="heads in the dataset (default 400)")
    parser.add_argument("--budget", type=float, default=3600.0, help="training seconds per network (default 3600)")
    parser.add_argument("--test-heads", type=int, default=20, help="test heads scored (default 20)")
    parser.add_argument("--fit-seconds", type=float, default=30.0, help="the tet fit row's seconds per head (default 30)")
    parser.add_argument("--resolution", type=int, default=128, help="marching-cubes samples per axis (default 128)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PhorhumTrainConfig settings")
    parser.add_argument("--threads", type=int, default=2, help="threads per network row (default 2)")
    parser.add_argument("--jobs", type=int, default=1, help="network rows trained at once (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="dataset folder (made if missing)")
    parser.add_argument("--runs", type=Path, help="where the training runs go (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="score the finished runs in --runs instead of training")
    parser.add_argument("--scans", type=Path, default=SHARED_MESHES,
                        help="folder of the real scans (default ../shared/data/meshes; skipped when missing)")
    parser.add_argument("--name", default="phorhum")
    return parser.parse_args(argv)


def train_row(job: tuple) -> tuple[str, dict]:
    """One network row's training (in this process or a worker): (row, {"iterations", "seconds"})."""
    key, data, run_dir, budget, assignments, threads, reuse = job
    summary = Path(run_dir) / "summary.json"
    if reuse and summary.is_file():  # a finished run of an earlier call (--reuse)
        done = json.loads(summary.read_text())
        print(f"{key}: reused {done['summary']}", flush=True)
        return key, {"iterations": done["iterations"], "seconds": done["seconds"]}
    import torch

    from zerolevel.learn.phorhum_train import PhorhumTrainConfig, train
    from zerolevel.settings import apply_overrides, parse_assignments

    torch.set_num_threads(threads)
    settings = {"budget_s": budget, "decay_at_budget": DECAY_AT_BUDGET, "val_split": None, "iterations": 10**9,
                **ROW_SETTINGS[key]}
    config = apply_overrides(PhorhumTrainConfig(**settings), parse_assignments(assignments))
    result = train(data, run_dir, config, "cpu", progress=False, threads=threads)
    print(f"{key}: {result.summary()}", flush=True)
    return key, {"iterations": result.iterations, "seconds": result.seconds}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)  # before numpy / torch load
    import torch

    from zerolevel.learn.dataset.heads import HeadDatasetSettings, load_head_split, write_head_dataset
    from zerolevel.learn.phorhum_eval import (FIGURES, evaluate_heads, mean_figures, mean_head_predictions,
                                              network_predictions, write_gallery)
    from zerolevel.learn.phorhum_train import PhorhumTrainConfig
    from zerolevel.settings import apply_overrides, parse_assignments

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = args.data or Path(tempfile.gettempdir()) / "zerolevel-bench" / f"phorhum-{args.count}-seed{args.seed}"
    made = write_head_dataset(data, args.count, HeadDatasetSettings(), seed=args.seed, workers=args.threads)
    print(f"data {data}: {made.info['splits']}, {made.rendered} made, {made.seconds:.0f} s", flush=True)
    train_split, test = load_head_split(data, "train"), load_head_split(data, "test")
    heads = list(range(min(args.test_heads, len(test))))
    runs = args.runs or Path(tempfile.mkdtemp(prefix="phorhum-runs-"))
    apply_overrides(PhorhumTrainConfig(), parse_assignments(args.set))  # a bad setting stops the run here
    jobs = [(key, data, runs / key, args.budget, args.set, args.threads, args.reuse)
            for key in args.rows if key in ROW_SETTINGS]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            trained = dict(pool.map(train_row, jobs))
    else:
        trained = dict(train_row(job) for job in jobs)
    rows, extra, networks = [], {}, {}
    for key in args.rows:
        if key == "mean":
            predictions, done = mean_head_predictions(test, heads, train_split), None
        elif key == "tetfit":
            from zerolevel.learn.head_fit import fit_predictions
            t0 = time.perf_counter()
            predictions, done = fit_predictions(test, heads, train_split, args.fit_seconds), None
            extra[key] = f"{(time.perf_counter() - t0) / len(heads):.1f} s per fit"
        else:
            from zerolevel.learn.phorhum import PhorhumNet
            from zerolevel.learn.predict import load_model
            net, done = load_model(runs / key, network=PhorhumNet), trained[key]
            networks[key] = net
            t0 = time.perf_counter()
            predictions = network_predictions(net, test, heads, args.resolution)
            extra[key] = f"{(time.perf_counter() - t0) / len(heads):.1f} s per prediction"
        figures = mean_figures(evaluate_heads(predictions, test, heads))
        print(f"{key}: {figures}", flush=True)
        rows.append([TITLES[key], *([done["iterations"], round(done["seconds"])] if done else ["-", "-"]),
                     *[figures[f] for f in FIGURES]])
        if key != "mean":
            stem = args.name + "_gallery" + ("" if key == "phorhum" else f"_{key}")
            write_gallery(predictions[:4], test, heads[:4], HERE / "results" / f"{stem}.png")
    command = "python benchmarks/phorhum.py " + " ".join(sys.argv[1:]) if argv is None else \
        "python benchmarks/phorhum.py " + " ".join(argv)
    scan_rows = score_scans(args, networks, train_split)
    notes = (f"Data: {args.count} generated heads (zerolevel dataset --generate heads defaults: 4 photographs "
             f"per head at 128^2; splits {made.info['splits']}), cache {data}. Network rows: PhorhumTrainConfig "
             f"defaults{' with ' + ' '.join(args.set) if args.set else ''}, from scratch, seed 0, until {args.budget:g} s "
             f"of the loop's wall-clock time, the decay (x0.3) after {DECAY_AT_BUDGET} of it, {args.jobs} row(s) at "
             f"once on {args.threads} thread(s) each, "
             f"torch {torch.__version__}. Scores: the first {len(heads)} test heads, each from its first photograph "
             f"with the dataset's camera; meshes by narrow-band marching cubes at {args.resolution}^3 over the head "
             f"box; {', '.join(f'{k}: {v}' for k, v in extra.items())}. Distances are fractions of the true head's "
             f"bounding-box diagonal (~47 cm for the neutral head: 1% ~ 4.7 mm); face: the model's face region "
             f"(learn.phorhum_eval). Benchmark wall time {time.perf_counter() - t_start:.0f} s.")
    write_report(args.name, "A head from one photograph: the PHORHUM head network beside the mean head",
                 command, ["row", "iterations", "seconds", *FIGURES], rows, notes=notes)
    print((HERE / "results" / f"{args.name}.md").read_text())
    if scan_rows:
        write_report(f"{args.name}_scans", "A head from one photograph, on real scans: the rows of "
                     f"{args.name}.md on scanned heads nobody generated", command, ["scan", "row", *SCAN_FIGURES],
                     scan_rows, notes=SCAN_NOTES.format(scans=args.scans, fit=args.fit_seconds,
                                                        resolution=args.resolution))
        print((HERE / "results" / f"{args.name}_scans.md").read_text())


SCAN_FIGURES = ("F@0.5% face", "F@1.0% face", "Chamfer face", "normal consistency face", "F@0.5% head", "F@1.0% head",
                "Chamfer head", "normal consistency head", "silhouette IoU")
SCAN_NOTES = ("Scans from {scans} (../shared/data/SOURCES.md), each placed in the head frame by "
              "`learn.head_scans` (turned by its up and front axes, then a rigid ICP of its face to the model's "
              "mean head's at 15 scales, the best both ways), painted one skin tone and photographed once as the "
              "head dataset photographs (one camera drawn by its rules, 128^2, its lights and background). "
              "Truth: the scan within the mean head's box grown by 0.05 head units (~2.4 cm), face: "
              "its samples whose nearest mean-head vertex is in the face region within 0.05; the predictions' "
              "samples are cut by the same box, their silhouettes against the whole photograph's mask (shoulders "
              "and a crown included, which no row predicts). No albedo figure: the scans have none. Network "
              "rows: the runs above; tet fit: {fit:g} s from the photograph's mask and normal map; meshes at "
              "{resolution}^3.")


def score_scans(args: argparse.Namespace, networks: dict, train_split) -> list[list]:
    """The rows' figures on each real scan (`SCANS` in `--scans`); none when the folder is missing."""
    if not args.scans or not args.scans.is_dir():
        print(f"no scans at {args.scans}: the scan table is skipped", flush=True)
        return []
    import trimesh

    from zerolevel.learn.head_fit import fit_head
    from zerolevel.learn.head_scans import scan_case, score_scan
    from zerolevel.learn.heads import mean_head
    from zerolevel.learn.phorhum_eval import HeadPrediction, mean_albedo, network_prediction

    colour = mean_albedo(train_split)
    rows = []
    for scan, (file, up, front) in SCANS.items():
        case = scan_case(trimesh.load(args.scans / file, force="mesh", process=False), up, front,
                         resolution=args.resolution)
        for key in args.rows:
            if key == "mean":
                prediction = HeadPrediction.uniform(mean_head().mesh(), colour)
            elif key == "tetfit":
                prediction = HeadPrediction.uniform(fit_head(case.image, case.normals, case.camera, args.fit_seconds),
                                                    colour)
            else:
                prediction = network_prediction(networks[key], case.image, case.camera, args.resolution)
            figures = score_scan(prediction, case)
            print(f"{scan}, {key}: {figures}", flush=True)
            rows.append([scan, TITLES[key], *[figures[f] for f in SCAN_FIGURES]])
    return rows


if __name__ == "__main__":
    main()
