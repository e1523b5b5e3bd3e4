"""Single-view reconstruction (Soft Rasterizer's network) on the CPU: training speed and test IoU of
each encoder after the same wall-clock budget.

1. Data: `write_dataset(generated_sources(categories, --count))` (the procedural shape families of
   `zerolevel.learn.shapes`, SoftRas's 24-view ring at 64^2, 32^3 voxels, 80/10/10 split per
   category) into a cache folder outside the repository (`--data`, default
   `<system temp>/zerolevel-bench/singleview-<count>-seed<seed>`); a rerun reuses it.
2. Speed, per encoder: the training step of `zerolevel.learn.train` (SoftRas's batch 64, the
   published cross-render, 2 views encoded and 4 soft-silhouette renders per sample, or with
   --no-cross-render one view in and one render per sample) timed over
   `--speed-steps` steps after one warm-up, on the network that the budget run (3.) ended with
   (its meshes have their trained size, which decides the rasteriser's pixel-triangle pairs).
   "step s" is the median step; "render %" the median share of the step spent in
   `soft_silhouette` (forward and backward, measured around the call and its backward pass).
3. Quality, per encoder: `train(...)` from scratch (seed 0, SoftRas's settings but --lr and
   --decay-at-budget, no validation during the run) until `--budget` wall-clock seconds, then the voxel IoU of the test split by the
   protocol of `zerolevel eval-set` (`learn.evaluate.evaluate_run`: every one of the 24 ring views
   of every test object, the predicted closed mesh voxelised on the dataset's 32^3 grid as the objects
   were (the published voxelisation: surface cells and what they enclose); a
   category's IoU is the mean over its (object, view) pairs, "mean IoU" the mean over categories,
   as SoftRas's tables). Two trivial baselines scored on the same test objects: "mean shape", the
   cells occupied in more than a fraction t of the train objects (t fitted on the train split,
   `evaluate.fit_mean_shape`; one shape for every input), and "mean shape per category", the same
   fitted per category and given the test object's category (which the network must infer).

    python benchmarks/singleview.py                         # full size: 150 objects per category,
                                                            # 3 encoders x 600 s (> 30 min)
    python benchmarks/singleview.py --no-cross-render --lr 3e-4 --decay-at-budget 0.75 --budget 1800  # results/singleview.md
    python benchmarks/singleview.py --count 6 --budget 20   # a quick end-to-end check
    python benchmarks/singleview.py --encoders baseline --no-cross-render --data /tmp/sv150

Writes results/singleview.md and .json, and a gallery picture per encoder (`--name` changes the stem).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402

DEFAULT_COUNT = 150  # objects per category (6 categories: 720 train, 90 val, 90 test)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["baseline", "resnet", "attention"],
                        choices=["baseline", "resnet", "attention"])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per encoder (default 600)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: SoftRas's 1e-4)")
    parser.add_argument("--decay-at-budget", type=float, default=None,
                        help="decay the learning rate and sigma (x0.3) once this fraction of the budget has passed")
    parser.add_argument("--cross-render", action=argparse.BooleanOptionalAction, default=True,
                        help="SoftRas's cross-render (default) or one render per sample")
    parser.add_argument("--speed-steps", type=int, default=3, help="timed steps per encoder (after a warm-up)")
    add_run_options(parser, "singleview")
    return parser.parse_args(argv)


def add_run_options(parser: argparse.ArgumentParser, name: str) -> None:
    """The options a single-view benchmark shares: the dataset, the test views, threads, run folders,
    seed and the results file stem (default `name`)."""
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="objects per category (default 150)")
    parser.add_argument("--categories", nargs="+", default=None, help="default: every shape family")
    parser.add_argument("--test-views", type=int, default=None,
                        help="ring views per test object, evenly spaced (default: all, the protocol)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="dataset cache folder (default: under the temp dir)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep the run folders here (default: a temporary folder, removed at the end)")
    parser.add_argument("--workers", type=int, default=None, help="processes making the dataset (default --threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=name, help=f"results file stem (default {name})")


# ---------------------------------------------------------------------------------------- data
def make_dataset(args: argparse.Namespace, settings=None, stem: str = "singleview") -> Path:
    """The generated dataset of `args` (categories, count, seed; `DatasetSettings` `settings`, default
    SoftRas's), cached in `args.data` or `<temp>/zerolevel-bench/<stem>-<count>-seed<seed>`."""
    from zerolevel.learn.dataset.settings import DatasetSettings
    from zerolevel.learn.dataset.sources import generated_sources
    from zerolevel.learn.dataset.write import write_dataset
    from zerolevel.learn.shapes import CATEGORIES

    categories = args.categories or list(CATEGORIES)
    root = args.data or Path(tempfile.gettempdir()) / "zerolevel-bench" / f"{stem}-{args.count}-seed{args.seed}"
    sources = generated_sources(categories, args.count, seed=args.seed)
    summary = write_dataset(root, sources, settings or DatasetSettings(), seed=args.seed,
                            workers=args.workers or args.threads,
                            source_info={"generated": categories, "count": args.count})
    print(f"dataset {root}: {summary.rendered} objects made, {summary.reused} reused, "
          f"{summary.seconds:.0f} s, splits {summary.info['splits']}", flush=True)
    return root


# ---------------------------------------------------------------------------------------- speed
class _RenderClock:
    """Wraps `soft_silhouette` in `zerolevel.learn.train`: seconds spent in its forward call and in
    its backward pass (an autograd bridge runs the renderer's own backward under the clock)."""

    def __init__(self):
        import torch

        from zerolevel.learn import train as train_module

        self.module, self.original, self.seconds = train_module, train_module.soft_silhouette, 0.0
        clock = self

        class Bridge(torch.autograd.Function):
            @staticmethod
            def forward(ctx, vertices, graph):  # noqa: D102
                ctx.leaf, ctx.rendered = graph  # a tuple: autograd does not follow it
                return ctx.rendered.detach().clone()

            @staticmethod
            def backward(ctx, grad):  # noqa: D102
                t0 = time.perf_counter()
                (g,) = torch.autograd.grad(ctx.rendered, ctx.leaf, grad)
                clock.seconds += time.perf_counter() - t0
                return g, None

        def timed(vertices, *args, **kwargs):
            t0 = time.perf_counter()
            with torch.enable_grad():
                leaf = vertices.detach().requires_grad_(vertices.requires_grad)
                rendered = clock.original(leaf, *args, **kwargs)
            out = Bridge.apply(vertices, (leaf, rendered)) if vertices.requires_grad else rendered
            clock.seconds += time.perf_counter() - t0
            return out

        self.timed = timed

    def __enter__(self) -> "_RenderClock":
        self.module.soft_silhouette = self.timed
        return self

    def __exit__(self, *exc) -> None:
        self.module.soft_silhouette = self.original


def step_speed(net, split, config, steps: int) -> tuple[float, float]:
    """Median seconds of a training step of `net` (a fresh Adam, SoftRas's sampler) and the median
    share of it spent in the soft rasteriser; one warm-up step first."""
    import numpy as np
    import torch

    from zerolevel.learn.sampling import PairSampler, split_cameras, split_images
    from zerolevel.learn.train import batch_losses

    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
    sampler = PairSampler(np.asarray(split.categories, dtype=object), split.images.shape[1], config.seed + 1)
    dtype = next(net.parameters()).dtype
    times, shares = [], []
    with _RenderClock() as clock:
        for i in range(steps + 1):
            t0 = time.perf_counter()
            clock.seconds = 0.0
            objects, view_a, view_b = sampler.sample(config.batch_size)
            images = [split_images(split, objects, v, "cpu", dtype) for v in (view_a, view_b)]
            cameras = [split_cameras(split, v, "cpu", dtype) for v in (view_a, view_b)]
            parts = batch_losses(net, net, *images, *cameras, config)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            seconds = time.perf_counter() - t0
            if i:  # the first step warms up
                times.append(seconds)
                shares.append(clock.seconds / seconds)
    return statistics.median(times), statistics.median(shares)


# ---------------------------------------------------------------------------------------- quality
def per_category_mean_shape(data: Path) -> dict:
    """`category_means` of the test IoUs of a mean shape fitted (as `evaluate.fit_mean_shape`) to each
    category's train objects, given the test object's category."""
    import numpy as np

    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.evaluate import category_means, fit_mean_shape, voxel_ious

    train, test = load_split(data, "train"), load_split(data, "test")
    train_cats, test_cats = np.asarray(train.categories), np.asarray(test.categories)
    ious = np.full(len(test), np.nan)
    for category in sorted(set(test.categories)):
        members = np.flatnonzero(train_cats == category)
        if len(members):
            shape = fit_mean_shape(np.asarray(train.voxels[members], dtype=bool))
            rows = np.flatnonzero(test_cats == category)
            ious[rows] = voxel_ious(shape.voxels, np.asarray(test.voxels[rows], dtype=bool))
    return category_means(list(test.categories), ious)


def train_config(args: argparse.Namespace, encoder: str = "baseline"):
    """The budget run's TrainConfig: SoftRas's settings but what the options change."""
    from zerolevel.learn.train import TrainConfig

    schedule = {} if args.lr is None else {"lr": args.lr}
    if args.decay_at_budget is not None:
        schedule["decay_at_budget"] = args.decay_at_budget
    return TrainConfig(encoder=encoder, batch_size=args.batch_size, cross_render=args.cross_render, **schedule,
                       seed=args.seed, budget_s=args.budget, iterations=10**9, val_split=None,
                       checkpoint_every=10**9, log_every=10)


def _departures(args: argparse.Namespace) -> str:
    changes = ([] if args.lr is None else ["the learning rate"]) + (
        [] if args.decay_at_budget is None else [f"the decay (x0.3) after {args.decay_at_budget:g} of the budget"])
    return f" but {' and '.join(changes)}" if changes else ""


def run_encoder(encoder: str, data: Path, runs: Path, args: argparse.Namespace) -> dict:
    """Budgeted training run, test IoU (`evaluate_run`), then step speed of the trained network."""
    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.evaluate import evaluate_run
    from zerolevel.learn.predict import load_model
    from zerolevel.learn.train import train

    config = train_config(args, encoder)
    run_dir = runs / encoder
    result = train(data, run_dir, config, "cpu", progress=False, threads=args.threads)
    print(f"{encoder}: {result.summary()}", flush=True)
    gallery = HERE / "results" / f"{args.name}_gallery_{encoder}.png"  # predictions beside the truth
    scores = evaluate_run(run_dir, data, "test", views=args.test_views, surface_views=0, progress=False,
                          gallery=gallery)
    print(f"{encoder}: test IoU {scores['iou']['mean']} ({scores['seconds']:.0f} s to evaluate)", flush=True)
    step_s, share = step_speed(load_model(run_dir), load_split(data, "train"), config, args.speed_steps)
    print(f"{encoder}: step {step_s:.2f} s, soft rasteriser {share:.0%}", flush=True)
    return {"iterations": result.iterations, "seconds": result.seconds, "images_s": result.samples_per_s,
            "step_s": step_s, "render_share": share, "iou": scores["iou"], "mean_shape": scores["mean_shape"]}


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)  # before numpy / torch load
    import torch

    from zerolevel.learn.dataset.folder import load_split

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = make_dataset(args)
    test_split = load_split(data, "test")
    categories = sorted(set(test_split.categories))
    columns = ["encoder", "iterations", "seconds", "images/s", "step s", "render %",
               *[f"IoU {c}" for c in categories], "mean IoU"]

    def row(name, iterations, seconds, images_s, step_s, share, ious):
        per = ious["per_category"]
        return [name, iterations, seconds, images_s, step_s, share,
                *[per.get(c) for c in categories], ious["mean"]]

    rows, mean_shape = [], None
    with tempfile.TemporaryDirectory(prefix="singleview-runs-") as tmp:
        runs = args.runs or Path(tmp)
        for encoder in args.encoders:
            r = run_encoder(encoder, data, runs, args)
            mean_shape = r["mean_shape"]
            rows.append(row(encoder, r["iterations"], round(r["seconds"], 1), round(r["images_s"], 2),
                            round(r["step_s"], 3), round(100 * r["render_share"], 1), r["iou"]))
    rows.insert(0, row(f"mean shape (train > {mean_shape['threshold']:g})", "-", "-", "-", "-", "-",
                       mean_shape["iou"]))
    rows.insert(1, row("mean shape per category", "-", "-", "-", "-", "-", per_category_mean_shape(data)))
    info = test_split.info
    cfg = train_config(args)
    command = "python benchmarks/singleview.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = (
        f"Data: generated shape families {', '.join(info['categories'])}, {args.count} objects each "
        f"(splits {info['splits']}), {info['views']} ring views at {info['resolution']}^2, "
        f"{info['voxels']}^3 voxels; cache {data}. Training: SoftRas's settings{_departures(args)} (batch {args.batch_size}, "
        f"Adam lr {cfg.lr:g}, sigma {cfg.sigma:g}, dist_eps {cfg.dist_eps:g}, Laplacian {cfg.lambda_laplacian:g}, "
        f"flatten {cfg.lambda_flatten:g}), "
        f"{'cross-render (2 views in, 4 silhouettes per sample)' if args.cross_render else 'one render per sample'}"
        f", from scratch, seed {args.seed}, until {args.budget:g} s of wall-clock time; torch "
        f"{torch.__version__}, {args.threads} threads. \"iterations\", \"seconds\": what the budget run did; "
        f"\"images/s\": training samples (batch entries: one object, views a and b) per second over that run; "
        f"\"step s\": median of {args.speed_steps} warm steps of the trained network; \"render %\": median "
        f"share of those steps in `soft_silhouette` (forward + backward). IoU: voxel IoU at 32^3 (the published "
        f"voxelisation, `geometry.occupancy.solid_voxels`, for the GT and the predicted closed mesh), {'all' if args.test_views is None else args.test_views} ring views per test "
        f"object (`evaluate_run`), mean per category over (object, view) pairs; \"mean IoU\": over categories. "
        f"Mean-shape rows: the train voxels occupied in more than a fitted fraction t of the objects (one "
        f"shape, or one per category given the category), scored on the test voxels. Pictures of each "
        f"network's test predictions beside the truth: {args.name}_gallery_<encoder>.png. Benchmark wall time "
        f"{time.perf_counter() - t_start:.0f} s.")
    write_report(args.name, "Single-view reconstruction (SoftRas network): training speed and test IoU "
                 "after a fixed budget", command, columns, rows, notes=notes)
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
