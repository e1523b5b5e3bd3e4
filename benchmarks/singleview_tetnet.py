"""Single-view reconstruction with every network of the project side by side, on the CPU: the tet-grid SDF
network (Wu et al.), SDFDiff's lattice network and SoftRas's; training speed and test quality of each
network after the same wall-clock budget (issue 17, point 6; issue 19).

1. Data: `write_dataset(generated_sources(categories, --count))` made as `zerolevel dataset --for tetnet`
   makes it (`cli.learning.dataset_defaults("tetnet")`: 128^2, varied lighting; normal maps; the 24-view
   ring, 32^3 voxels, 80/10/10 split per category), cached outside the repository (`--data`, default
   `<system temp>/zerolevel-bench/singleview_tetnet-<count>-seed<seed>`); a rerun reuses it.
2. Rows (`--rows`), each network trained from scratch (seed 0, no validation) until `--budget` wall-clock
   seconds of its loop (with `--reuse`, a network an earlier call trained in `--runs` is scored as it is):
   - "mean shape", "mean shape per category": the baselines of `singleview.py`;
   - "softras": SoftRas's network (`learn.train`) on the same 128^2 images (SoftRasNet takes any size;
     its silhouettes are rendered at 128^2 too), the settings of the SoftRas benchmark of record
     (`singleview.py --no-cross-render --lr 3e-4 --decay-at-budget 0.75`);
   - "tetnet (GT normals)": `learn.tetnet_train` with its defaults (`--tetnet-set KEY=VALUE` overrides any
     `TetNetTrainConfig` field, for both tetnet rows), the decay (x0.3) after 0.75 of the budget;
   - "tetnet (pix2pix normals)": first the normals network (`learn.pix2pix_train`, its defaults) for
     `--normals-budget` s, scored on the test split beside the mean-normal-map baseline
     (`normals_eval.evaluate_normals_run`: angular error, in the notes); then TetNet trained on its predicted
     normal maps of the train split (`normals_from`) for `--budget` s;
   - "sdfnet": SDFDiff's network (`learn.sdfnet_train`, its defaults; `--sdfnet-set KEY=VALUE` overrides)
     with the decay (x0.3) after 0.75 of the budget, one run scored twice: meshes of its coarse 32^3
     lattice and of its refined 64^3 one (`evaluate_run(level=...)`);
   - "tetnet + refine S": the GT-normals TetNet's prediction (this call's, or with `--runs` of an earlier call
     and no tetnet-gt row, that call's network) from view 0 of each of the first
     `--refine-objects` test objects of each category, continued for `--refine-seconds` by the tet-grid fit
     (`learn.refine.refine`, `zerolevel predict --refine`) to that view's mask and a normal map
     (`--refine-normals`: pix2pix's prediction from the same image, default; the dataset's, an oracle;
     or none), beside the unrefined prediction on the same (object, view) pairs.
3. Scores (`learn.evaluate.evaluate_run`, `zerolevel eval-set`'s protocol): voxel IoU at 32^3 on every ring
   view of every test object (`--test-views` fewer), mean per category over (object, view) pairs and over
   categories; F-score at 0.5% and 0.25% of the GT bounding-box diagonal, Chamfer (in diagonals) and normal
   consistency on view 0 of each object. "iterations", "seconds", "samples/s": the budget run's;
   "step s": the median seconds per iteration over the run's log (one line per iteration, the first left out).
4. A TetNet training step at batch `--step-batch` (default 16) taken apart (`step_breakdown`: timers around
   the parts of `TetNetTraining.batch_losses` and the step), median of `--step-repeats` steps after a warm-up,
   of the trained GT-normals network: `results/<name>_step.md`.

    python benchmarks/singleview_tetnet.py        # the command of record: 150 objects per category,
                                                  # 3 networks x 1800 s + 600 s of pix2pix (> 2 h)
    python benchmarks/singleview_tetnet.py --count 4 --budget 15 --normals-budget 10 --refine-seconds 3 \\
        --refine-objects 1 --categories chair table --step-repeats 1 --name scratch_tetnet --threads 1   # quick check

Writes results/<name>.md and .json, <name>_step.md and .json, and a gallery picture per network row
(<name>_gallery_<row>.png); `--name` (default singleview_tetnet) changes the stem.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402
from singleview import add_run_options, make_dataset, per_category_mean_shape  # noqa: E402
from singleview import train_config as softras_config  # noqa: E402

ROWS = ("mean", "mean-category", "softras", "tetnet-gt", "tetnet-pix2pix", "refine", "sdfnet")
TRAINED_ROWS = {"softras", "tetnet-gt", "tetnet-pix2pix", "sdfnet"}
TITLES = {"softras": "softras", "tetnet-gt": "tetnet (GT normals)", "tetnet-pix2pix": "tetnet (pix2pix normals)",
          "sdfnet": "sdfnet"}
SDFNET_LEVELS = {"coarse": "sdfnet (coarse 32^3)", "fine": "sdfnet (refined 64^3)"}  # one run, two rows
SOFTRAS_RECIPE = {"batch_size": 64, "cross_render": False, "lr": 3e-4, "decay_at_budget": 0.75}  # singleview.md
DECAY_AT_BUDGET = 0.75


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--budget", type=float, default=1800.0, help="training seconds per network (default 1800)")
    parser.add_argument("--normals-budget", type=float, default=600.0, help="pix2pix training seconds (default 600)")
    parser.add_argument("--refine-seconds", type=float, default=20.0, help="tet-grid fit per object (default 20)")
    parser.add_argument("--refine-objects", type=int, default=2,
                        help="first test objects of each category refined (default 2)")
    parser.add_argument("--refine-normals", choices=["pix2pix", "gt", "none"], default="pix2pix",
                        help="the normal map the refine fits besides the mask (default: pix2pix's prediction)")
    parser.add_argument("--tetnet-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="TetNetTrainConfig settings of both tetnet rows")
    parser.add_argument("--sdfnet-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SDFNetTrainConfig settings of the sdfnet rows")
    parser.add_argument("--encoder-from-normals", action="store_true",
                        help="both tetnet rows: the pix2pix encoder started from the normals run (trained first)")
    parser.add_argument("--reuse", action="store_true",
                        help="score the networks already trained in --runs (an earlier call's, same settings) "
                             "instead of training them again; train the others")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="the networks' seed (default --seed, which also makes the dataset): a second "
                             "seed's runs on the same data")
    parser.add_argument("--step-batch", type=int, default=16, help="batch of the step breakdown (default 16)")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed steps of the breakdown (default 3)")
    add_run_options(parser, "singleview_tetnet")
    args = parser.parse_args(argv)
    args.train_seed = args.seed if args.train_seed is None else args.train_seed

    def kept(key: str) -> bool:  # trained by an earlier call into the same --runs
        return args.runs is not None and (args.runs / key / "checkpoint.pt").is_file()

    if "refine" in args.rows and "tetnet-gt" not in args.rows and not kept("tetnet-gt"):
        parser.error("--rows refine refines the tetnet-gt row's network: select tetnet-gt too, or name with --runs "
                     "the runs of an earlier call that trained it (and the normals run, for pix2pix normal maps)")
    if ("refine" in args.rows and args.refine_normals == "pix2pix" and "tetnet-pix2pix" not in args.rows
            and not kept("normals") and not args.encoder_from_normals):
        parser.error("--refine-normals pix2pix needs the normals run of the tetnet-pix2pix row: select it, "
                     "or --refine-normals gt / none")
    return args


# ---------------------------------------------------------------------------------------- training
def tetnet_config(args: argparse.Namespace, **settings):
    """The tetnet rows' TetNetTrainConfig: its defaults, a budget run, `--tetnet-set` on top."""
    from zerolevel.learn.tetnet_train import TetNetTrainConfig
    from zerolevel.settings import apply_overrides, parse_assignments

    config = TetNetTrainConfig(**_budget_run(args, args.budget), decay_at_budget=DECAY_AT_BUDGET, **settings)
    return apply_overrides(config, parse_assignments(args.tetnet_set))


def sdfnet_config(args: argparse.Namespace):
    """The sdfnet rows' SDFNetTrainConfig: its defaults, a budget run with the decay, `--sdfnet-set` on top."""
    from zerolevel.learn.sdfnet_train import SDFNetTrainConfig
    from zerolevel.settings import apply_overrides, parse_assignments

    config = SDFNetTrainConfig(**_budget_run(args, args.budget), decay_at_budget=DECAY_AT_BUDGET)
    return apply_overrides(config, parse_assignments(args.sdfnet_set))


def _budget_run(args: argparse.Namespace, budget: float) -> dict:
    """The run settings of every budget run: seed, budget, no validation, no checkpoint before the end,
    a log line per iteration (for the median step)."""
    return {"seed": args.train_seed, "budget_s": budget, "iterations": 10**9, "val_split": None,
            "checkpoint_every": 10**9, "log_every": 1}


def configs(args: argparse.Namespace, runs: Path) -> dict:
    """{row: (training module, config)} of the trained rows, and "normals" for the pix2pix network."""
    from zerolevel.learn import pix2pix_train, sdfnet_train, tetnet_train
    from zerolevel.learn import train as softras_train

    recipe = argparse.Namespace(**SOFTRAS_RECIPE, seed=args.train_seed, budget=args.budget)
    encoder = {"encoder": "pix2pix", "encoder_from": str(runs / "normals")} if args.encoder_from_normals else {}
    return {"softras": (softras_train, replace(softras_config(recipe), **_budget_run(args, args.budget))),
            "normals": (pix2pix_train, pix2pix_train.NormalsTrainConfig(**_budget_run(args, args.normals_budget))),
            "tetnet-gt": (tetnet_train, tetnet_config(args, **encoder)),
            "tetnet-pix2pix": (tetnet_train, tetnet_config(args, normals_from=str(runs / "normals"), **encoder)),
            "sdfnet": (sdfnet_train, sdfnet_config(args))}


def median_step(run_dir: Path) -> float | None:
    """Median seconds per iteration between the run's log lines, the first interval (warm-up) left out."""
    from zerolevel.optim.loop import LOG, read_log

    lines = [row for row in read_log(run_dir / LOG) if "loss" in row]
    steps = [(b["time"] - a["time"]) / (b["iter"] - a["iter"])
             for a, b in zip(lines, lines[1:]) if b["iter"] > a["iter"]]
    return statistics.median(steps[1:] or steps) if steps else None


def train_row(key: str, module, config, data: Path, runs: Path, args: argparse.Namespace) -> dict:
    """Train one network for its budget in runs/<key> (with --reuse, keep a run trained there before);
    what the table reports of the run (its summary.json)."""
    reused = args.reuse and (runs / key / "summary.json").is_file()
    if not reused:
        module.train(data, runs / key, config, "cpu", progress=False, threads=args.threads)
    run = json.loads((runs / key / "summary.json").read_text())
    print(f"{key}: {'reused ' if reused else ''}{run['summary']}", flush=True)
    return {"iterations": run["iterations"], "seconds": round(run["seconds"], 1),
            "samples_s": round(run["samples_per_s"], 2), "step_s": median_step(runs / key), "reused": reused}


# ---------------------------------------------------------------------------------------- scores
def score_run(key: str, run_dir: Path, data: Path, args: argparse.Namespace, level: str | None = None) -> dict:
    """`evaluate_run` on the test split (surface metrics on view 0), with a gallery picture; `level`: an
    SDFNet's lattice."""
    from zerolevel.learn.evaluate import evaluate_run

    stem = key.replace("-", "_") + ("" if level is None else f"_{level}")
    gallery = HERE / "results" / f"{args.name}_gallery_{stem}.png"
    scores = evaluate_run(run_dir, data, "test", views=args.test_views, surface_views=1, progress=False,
                          gallery=gallery, level=level)
    print(f"{stem}: test IoU {scores['iou']['mean']} ({scores['seconds']:.0f} s to evaluate)", flush=True)
    return {"iou": scores["iou"], "surface": scores["surface"]}


def score_meshes(meshes: list, split, objects: list[int], seed: int) -> dict:
    """Scores as `score_run`'s of one mesh per object (from view 0), aggregated per category."""
    import numpy as np

    from zerolevel.geometry.mesh import load_mesh
    from zerolevel.learn.evaluate import category_means, surface_scores, voxel_iou
    from zerolevel.metrics import DEFAULT_TAUS, tau_key

    values = defaultdict(list)
    for mesh, i in zip(meshes, objects):
        values["iou"].append(voxel_iou(mesh.vertices, mesh.faces, np.asarray(split.voxels[i], dtype=bool)))
        for name, value in surface_scores(mesh, load_mesh(split.mesh_path(i)), seed=seed).items():
            values[name].append(value)
    cats = [split.categories[i] for i in objects]
    means = {name: category_means(cats, np.asarray(v, dtype=float)) for name, v in values.items()}
    surface = {"chamfer": means["chamfer"], "normal_consistency": means["normal_consistency"],
               "fscore": {tau_key(t): means[f"fscore@{tau_key(t)}"] for t in DEFAULT_TAUS}}
    return {"iou": means["iou"], "surface": surface}


def mean_shape_rows(data: Path) -> list[dict]:
    """The two baselines' rows: one mean train shape (threshold fitted), and one per category."""
    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.evaluate import category_means, fit_mean_shape, voxel_ious

    train, test = load_split(data, "train"), load_split(data, "test")
    shape = fit_mean_shape(train)
    return [{"name": f"mean shape (train > {shape.threshold:g})",
             "iou": category_means(list(test.categories), voxel_ious(shape.voxels, test))},
            {"name": "mean shape per category", "iou": per_category_mean_shape(data)}]


# ---------------------------------------------------------------------------------------- refine
def refine_normal_maps(split, objects: list[int], how: str, normals_run: Path) -> list:
    """The (S, S, 3) world-space normal maps of the objects' view 0 the refine fits: pix2pix's (`how`
    "pix2pix"), the dataset's ("gt"), or None each ("none")."""
    from zerolevel.learn.dataset.folder import decode_normals
    from zerolevel.learn.pix2pix import NormalsNet
    from zerolevel.learn.predict import load_model

    if how != "pix2pix":
        return [decode_normals(split.normals[i, 0]) if how == "gt" else None for i in objects]
    return predicted_normals(load_model(normals_run, network=NormalsNet), split, objects, [0] * len(objects))


def predicted_normals(net, split, objects: list[int], views: list[int]) -> list:
    """The (S, S, 3) world-space normal maps a normals network predicts from the (object, view) pairs' images."""
    import numpy as np
    import torch

    from zerolevel.learn.sampling import split_images

    with torch.no_grad():
        images = split_images(split, np.asarray(objects), np.asarray(views), "cpu", torch.float32)
        return list(net.world_normals(images, split.cameras.R[list(views)]).numpy())


def first_per_category(categories: list[str], count: int) -> list[int]:
    """Indices of the first `count` objects of each category (in the split's order)."""
    seen: dict[str, int] = defaultdict(int)
    chosen = []
    for i, category in enumerate(categories):
        if seen[category] < count:
            chosen.append(i)
            seen[category] += 1
    return chosen


def refine_rows(run_dir: Path, data: Path, normals_run: Path, args: argparse.Namespace) -> list[dict]:
    """The GT-normals TetNet's prediction from view 0 of the first --refine-objects test objects of each category, and
    the same refined by the tet-grid fit for --refine-seconds: two rows scored on those pairs."""
    import numpy as np

    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.predict import load_model, network_outputs, output_mesh
    from zerolevel.learn.refine import input_scene, refine, ring_cameras

    net, split = load_model(run_dir), load_split(data, "test", normals=args.refine_normals == "gt")
    objects = first_per_category(list(split.categories), args.refine_objects)
    cameras = ring_cameras(data, [0], net.config.image_size)
    predicted, refined, fits = [], [], []
    for i, normals in zip(objects, refine_normal_maps(split, objects, args.refine_normals, normals_run)):
        image = np.asarray(split.images[i, 0])
        output = network_outputs(net, [image], cameras=cameras)[0]
        scene = input_scene([image], cameras, None if normals is None else [normals], float(net.config.bounds))
        fit = refine(net, output, scene, args.refine_seconds, progress=False, seed=args.seed)
        predicted.append(output_mesh(net, output))
        refined.append(fit.mesh)
        fits.append(fit.result)
        print(f"refine {i}: {fit.result.iterations} iterations in {fit.result.seconds:.1f} s", flush=True)
    targets = "mask" + ("" if args.refine_normals == "none" else f" + {args.refine_normals} normal map")
    pairs = f"{len(objects)} test objects, view 0"
    return [{"name": f"tetnet (GT normals), {pairs}", **score_meshes(predicted, split, objects, args.seed)},
            {"name": f"tetnet + refine {args.refine_seconds:g} s ({targets}), {pairs}",
             "iterations": round(statistics.mean(r.iterations for r in fits)),
             "seconds": round(statistics.mean(r.seconds for r in fits), 1),
             **score_meshes(refined, split, objects, args.seed)}]


# ---------------------------------------------------------------------------------------- step
@contextmanager
def _timed(owner, attribute: str, clock: dict, key: str):
    """Replace owner.attribute (a function or method) by one that adds its seconds to clock[key]."""
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            clock[key] += time.perf_counter() - t0

    setattr(owner, attribute, timed)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def step_breakdown(data: Path, run_dir: Path | None, config, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of the parts of a TetNet training step (`TetNetTraining.step`) at batch --step-batch,
    of the network of `run_dir` (None: untrained) trained with `config`, over --step-repeats steps after a
    warm-up."""
    import torch

    from zerolevel.learn import tetnet_train
    from zerolevel.learn.predict import load_model
    from zerolevel.learn.sampling import open_splits
    from zerolevel.optim.distributed import Distributed

    train_split, _ = open_splits(data, "train", None, normals=True)
    task = tetnet_train._make_task(train_split, None, replace(config, batch_size=args.step_batch, normals_from=None),
                                   Distributed(), torch.device("cpu"))
    if run_dir is not None:
        task.net.load_state_dict(load_model(run_dir).state_dict())
    task.net.train()
    parts = {"data": (task, "next_batch"), "network forward": (task, "model"),
             "marching tetrahedra": (task.net, "meshes"),
             "rasterisation (forward)": (tetnet_train, "render_normals"), "expand": (task, "expand"),
             "carve": (task, "carve"), "eikonal": (tetnet_train, "lattice_eikonal"),
             "losses (forward)": (task, "batch_losses"), "step": (task, "step")}
    samples = defaultdict(list)
    with ExitStack() as stack:
        clock = defaultdict(float)
        for key, (owner, attribute) in parts.items():
            stack.enter_context(_timed(owner, attribute, clock, key))
        for i in range(args.step_repeats + 1):
            clock.clear()
            task.step(i)
            if i:  # the first step warms up
                for key in parts:
                    samples[key].append(clock[key])
    return {key: statistics.median(values) for key, values in samples.items()}


def step_table(times: dict[str, float]) -> list[list]:
    """Rows (part, median s, % of the step): the timed parts, the rest of the forward, backward + Adam."""
    inner = ("network forward", "marching tetrahedra", "rasterisation (forward)", "expand", "carve", "eikonal")
    derived = {"other losses (forward)": times["losses (forward)"] - sum(times[k] for k in inner),
               "backward + Adam": times["step"] - times["data"] - times["losses (forward)"]}
    total = times["step"]
    return [[key, round(s, 4), round(100 * s / total, 1)]
            for key, s in [(k, times[k]) for k in ("data", *inner)] + list(derived.items()) + [("step", total)]]


# ---------------------------------------------------------------------------------------- report
def table_row(row: dict, categories: list[str]) -> list:
    """A row of the table from a row dict (name, run figures, "iou", "surface")."""
    from zerolevel.metrics import tau_key

    surface = row.get("surface")
    cells = ([surface["fscore"][tau_key(t)]["mean"] for t in (0.005, 0.0025)]
             + [surface["chamfer"]["mean"], surface["normal_consistency"]["mean"]]) if surface else ["-"] * 4
    return [row["name"], *[row.get(k, "-") for k in ("iterations", "seconds", "samples_s", "step_s")],
            *[row["iou"]["per_category"].get(c) for c in categories], row["iou"]["mean"], *cells]


def reuse_note(key: str, trained: dict, runs: Path) -> list[str]:
    """[a sentence saying that the row's network is an earlier call's] with --reuse, else []."""
    if not trained["reused"]:
        return []
    return [f"{key}: the run an earlier call trained in {runs / key} (--reuse), not retrained."]


def normals_note(run_dir: Path, data: Path, args: argparse.Namespace, trained: dict) -> str:
    """The pix2pix network's test angular error beside the mean normal map's, in words."""
    from zerolevel.learn.normals_eval import evaluate_normals_run

    scores = evaluate_normals_run(run_dir, data, "test", views=args.test_views)
    net, base = scores["network"], scores["baseline"]
    return (f"pix2pix normals network ({trained['iterations']} iterations in {trained['seconds']} s, "
            f"{trained['samples_s']} samples/s): test angular error mean {net['mean']:.2f} deg, median "
            f"{net['median']:.2f} deg, {net['within']['22.5']:.1f}% of pixels within 22.5 deg; the mean normal "
            f"map per view: mean {base['mean']:.2f}, median {base['median']:.2f} deg, {base['within']['22.5']:.1f}%.")


def notes(args: argparse.Namespace, data: Path, info: dict, cfgs: dict, extra: list[str], seconds: float,
          runs: Path) -> str:
    import torch

    data_note = (f"Data: generated shape families {', '.join(info['categories'])}, {args.count} objects each (splits "
                 f"{info['splits']}), {info['views']} ring views at {info['resolution']}^2, lighting "
                 f"{info['light']['type']}, normal maps, {info['voxels']}^3 voxels; cache {data}.")
    if not TRAINED_ROWS & set(args.rows):  # scores of the networks an earlier call trained
        return " ".join([data_note, kept_runs_note(runs), f"torch {torch.__version__}, {args.threads} thread(s).",
                         *extra, f"Benchmark wall time {seconds:.0f} s."])
    tet = cfgs["tetnet-gt"][1]
    return " ".join([
        f"{data_note} Every network from scratch, seed {args.train_seed}, "
        f"until {args.budget:g} s of its loop's wall-clock time, no validation; torch {torch.__version__}, "
        f"{args.threads} thread(s).",
        f"softras: SoftRas's settings but one render per sample, Adam lr 3e-4 and the decay (x0.3) after 0.75 "
        f"of the budget (singleview.md's recipe), batch {SOFTRAS_RECIPE['batch_size']}, on the 128^2 images.",
        f"tetnet: TetNetTrainConfig defaults (batch {tet.batch_size}, lr {tet.lr:g}, grid {tet.grid}) with the "
        f"decay (x0.3) after {DECAY_AT_BUDGET} of the budget"
        + (f" and --tetnet-set {' '.join(args.tetnet_set)}" if args.tetnet_set else "")
        + (f"; both tetnet rows use the pix2pix encoder, started from the normals network's first levels (its "
           f"{args.normals_budget:g} s are outside their budgets)" if args.encoder_from_normals else "")
        + "; the pix2pix row predicts its train split's normal maps before its loop starts (outside the budget).",
        *([sdfnet_note(args, cfgs["sdfnet"][1])] if "sdfnet" in args.rows else []),

        "\"step s\": median seconds per iteration over the run's log. IoU: voxel IoU at 32^3, "
        f"{'all' if args.test_views is None else args.test_views} ring views per test object (`evaluate_run`), "
        "mean per category over (object, view) pairs, \"mean IoU\" over categories; F@0.5% / F@0.25% (of the GT "
        "bounding-box diagonal), Chamfer (in diagonals) and normal consistency on view 0 of each test object.",
        *extra,
        f"Pictures: {args.name}_gallery_<row>.png; the step breakdown: {args.name}_step.md. Benchmark wall time "
        f"{seconds:.0f} s."])


def sdfnet_note(args: argparse.Namespace, cfg) -> str:
    return (f"sdfnet (SDFDiff): SDFNetTrainConfig defaults (batch {cfg.batch_size}, lr {cfg.lr:g}, the {cfg.encoder} "
            f"encoder, renders at {cfg.render_size}^2, the coarse {cfg.grid}^3 lattice alone for the first "
            f"{cfg.fine_at_budget:g} of the budget, then both) with the decay (x0.3) after {DECAY_AT_BUDGET} of the budget"
            + (f" and --sdfnet-set {' '.join(args.sdfnet_set)}" if args.sdfnet_set else "")
            + "; one run, scored on its coarse lattice and on its refined one (marching cubes of each).")


def kept_runs_note(runs: Path) -> str:
    """What the networks of an earlier call in `runs` were: each run's settings and length (summary.json)."""
    import json

    parts = []
    for key in [k for k in ("tetnet-gt", "normals") if (runs / k / "summary.json").is_file()]:
        summary = json.loads((runs / key / "summary.json").read_text())
        parts.append(f"{key}: {summary['iterations']} iterations in {summary['seconds']:.0f} s")
    return (f"Networks: those an earlier call of this benchmark trained in {runs} ({'; '.join(parts)}; their "
            "settings in each run's checkpoint), not retrained.")


def refine_note(args: argparse.Namespace, rows: list[dict]) -> str:
    which = {"pix2pix": "pix2pix's normal map predicted from the same image (world space)",
             "gt": "the dataset's normal map of that view (an oracle)", "none": "no normal map"}[args.refine_normals]
    return (f"Refine rows: the first {args.refine_objects} test objects of each category, view 0 each; the GT-normals tetnet's "
            f"prediction from that one image, and the same continued for {args.refine_seconds:g} s by the tet-grid "
            f"fit (`learn.refine.refine`, its REFINE_ONE_VIEW settings, the ring camera of view 0) to the view's mask and "
            f"{which}; \"iterations\", \"seconds\": the fit's, mean over objects. All metrics on those (object, "
            f"view) pairs only. F@0.5% per category, predicted -> refined: {_fscore_change(*rows)}.")


def _fscore_change(predicted: dict, refined: dict) -> str:
    """"airplane 0.05 -> 0.07, ..." of two score rows' F@0.5% per category."""
    from zerolevel.metrics import tau_key

    before, after = (row["surface"]["fscore"][tau_key(0.005)]["per_category"] for row in (predicted, refined))
    def text(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    return ", ".join(f"{c} {text(before[c])} -> {text(after[c])}" for c in sorted(before))


# ---------------------------------------------------------------------------------------- main
def run_rows(args: argparse.Namespace, data: Path, runs: Path, cfgs: dict) -> tuple[list[dict], list[str]]:
    """Train and score the selected network rows; (row dicts, notes)."""
    rows, extra, normals_trained = [], [], False
    for key in ("softras", "tetnet-gt", "tetnet-pix2pix"):
        if key not in args.rows:
            continue
        needs_normals = key == "tetnet-pix2pix" or (key == "tetnet-gt" and args.encoder_from_normals)
        if needs_normals and not normals_trained:
            normals_trained = True
            trained = train_row("normals", *cfgs["normals"], data, runs, args)
            extra.append(normals_note(runs / "normals", data, args, trained))
            extra += reuse_note("normals", trained, runs)
        trained = train_row(key, *cfgs[key], data, runs, args)
        extra += reuse_note(key, trained, runs)
        rows.append({"name": TITLES[key], **trained, **score_run(key, runs / key, data, args)})
    if "refine" in args.rows:
        refined = refine_rows(runs / "tetnet-gt", data, runs / "normals", args)
        rows += refined
        extra.append(refine_note(args, refined))
    if "sdfnet" in args.rows:
        trained = train_row("sdfnet", *cfgs["sdfnet"], data, runs, args)
        extra += reuse_note("sdfnet", trained, runs)
        rows += [{"name": title, **trained, **score_run("sdfnet", runs / "sdfnet", data, args, level)}
                 for level, title in SDFNET_LEVELS.items()]
    return rows, extra


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)  # before numpy / torch load
    import torch

    from zerolevel.cli.learning import dataset_defaults
    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.dataset.settings import DatasetSettings

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = make_dataset(args, DatasetSettings(**dataset_defaults("tetnet")), "singleview_tetnet")
    info = load_split(data, "test").info
    categories = sorted(info["categories"])
    command = "python benchmarks/singleview_tetnet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="singleview-tetnet-runs-") as tmp:
        runs = args.runs or Path(tmp)
        cfgs = configs(args, runs)
        rows, extra = run_rows(args, data, runs, cfgs)
        baselines = mean_shape_rows(data)
        rows = [r for r, k in zip(baselines, ("mean", "mean-category")) if k in args.rows] + rows
        if {"tetnet-gt", "tetnet-pix2pix"} & set(args.rows):
            trained = runs / ("tetnet-gt" if "tetnet-gt" in args.rows else "tetnet-pix2pix")
            write_report(f"{args.name}_step", f"One TetNet training step at batch {args.step_batch}, taken apart",
                         command, ["part", "median s", "% of step"],
                         step_table(step_breakdown(data, trained, cfgs[trained.name][1], args)),
                         notes=step_notes(args, trained.name))
    columns = ["row", "iterations", "seconds", "samples/s", "step s", *[f"IoU {c}" for c in categories], "mean IoU",
               "F@0.5%", "F@0.25%", "Chamfer", "normal consistency"]
    write_report(args.name, "Single-view reconstruction: the tet-grid SDF network (Wu et al.), SDFDiff's lattice "
                 "network and SoftRas's, after a fixed training budget", command, columns, [table_row(r, categories) for r in rows],
                 notes=notes(args, data, info, cfgs, extra, time.perf_counter() - t_start, runs))
    print((HERE / "results" / f"{args.name}.md").read_text())
    if (HERE / "results" / f"{args.name}_step.md").is_file():
        print((HERE / "results" / f"{args.name}_step.md").read_text())


def step_notes(args: argparse.Namespace, run: str) -> str:
    return (f"`TetNetTraining.step` of the {run} row's trained network at batch {args.step_batch}, "
            f"{args.threads} thread(s): median of {args.step_repeats} steps after a warm-up. Timers around "
            "`next_batch` (data), the network call, `TetNet.meshes` (marching tetrahedra, the whole batch), "
            "`render_normals` (its forward, every sample's mesh in its views at once; its backward is in \"backward + Adam\"), `expand`, `carve` (computed "
            "even at weight 0), `lattice_eikonal`, `batch_losses` and the whole step; \"other losses\": the "
            "rest of `batch_losses` (normal / mask / shrink / area terms, normal-map lookup).")


if __name__ == "__main__":
    main()
