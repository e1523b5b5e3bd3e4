"""The `zerolevel` command line: one entry point, one verb per job.

Each verb parses its options, sets the thread count once, and calls library functions; bad input
surfaces as `InputError` and becomes one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# numpy's OpenBLAS threads fight torch's for the same cores and make small products 100x slower
# (measured in the ray caster); the heavy numeric work here is torch's or Embree's.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from . import methods  # noqa: E402
from .errors import InputError  # noqa: E402

CLOSED_MESH = "closed_mesh.ply"  # `render --close-holes` writes the capped solid here, for `--gt`

EPILOG_RENDER = """examples:
  zerolevel render -o spot_scene                       # the bundled Spot cow, 24 views at 256x256
  zerolevel render bunny.ply -o bunny --views 48 --res 512 --layout ring --elevation 20
  zerolevel render bunny.ply -o bunny --close-holes    # cap the open base; bunny/closed_mesh.ply is the GT
  zerolevel render head.obj -o head_gt --cameras DiLiGenT-MV/bearPNG    # the cameras of another scene
"""
EPILOG_EVAL = """examples:
  zerolevel eval out/mesh.ply gt.obj
  zerolevel eval out/mesh.ply gt.obj --tau 0.01 0.005 --iou 32 --json metrics.json
"""
EPILOG_IMPORT = """examples:
  zerolevel import neus DiLiGenT-MV/bearPNG -o bear_scene
  zerolevel import middlebury templeSparseRing -o temple_scene
"""
EPILOG_FIT = """examples:
  zerolevel fit spot_scene -o spot_fit                     # SuperNormal on normals + masks
  zerolevel fit spot_scene -o spot_fit --budget 120 --gt spot.obj
  zerolevel fit spot_scene -o spot_fit --resume            # continue an interrupted fit
  zerolevel fit spot_scene -o spot_fit --method tetsdf     # Wu et al.'s tet-grid SDF
  zerolevel fit temple_scene -o temple_fit --method sdfdiff --set resolutions=16,24,32,48,64,96,128
"""
EPILOG_EXTRACT = """examples:
  zerolevel extract spot_fit/checkpoint.pt -o spot_512.ply --resolution 512
"""
EPILOG_INFO = """examples:
  zerolevel info spot_scene        # views, sizes, modalities; checks every file
  zerolevel info DiLiGenT-MV/bearPNG
"""
EPILOG_DEMO = """examples:
  zerolevel demo -o demo_out       # render Spot, fit it (SuperNormal), evaluate, write demo_out/report.html
  zerolevel demo -o demo_out --budget 60
"""


def default_threads() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_torch(threads: int, seed: int) -> None:
    """Set torch's intra- and inter-op threads once, before any work, and seed every generator."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set (e.g. when main() runs twice in one process, as in tests)
        pass
    torch.manual_seed(seed)
    np.random.seed(seed)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for torch (default: the CPUs this process may use)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerolevel",
        description="Surfaces (signed distance fields and watertight meshes) from 2D observations.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("render", help="ground-truth scene (normals, masks, depth, shaded images) from a mesh",
                       epilog=EPILOG_RENDER, formatter_class=formatter)
    p.add_argument("mesh", nargs="?", help="input mesh (default: the bundled Spot cow)")
    p.add_argument("-o", "--output", required=True, help="scene folder to write")
    p.add_argument("--views", type=int, default=24, help="number of cameras (default: 24)")
    p.add_argument("--res", type=int, default=256, help="image width and height in pixels (default: 256)")
    p.add_argument("--layout", choices=["sphere", "ring"], default="sphere",
                   help="cameras near-uniform on a sphere, or a ring around the y axis (default: sphere)")
    p.add_argument("--distance", type=float, default=3.0, help="camera distance in unit-sphere units (default: 3)")
    p.add_argument("--fov", type=float, default=45.0, help="horizontal field of view in degrees (default: 45)")
    p.add_argument("--elevation", type=float, default=30.0, help="ring elevation in degrees (default: 30)")
    p.add_argument("--cameras", metavar="SCENE",
                   help="use the cameras (and the unit-sphere normalisation) of this scene or NeuS folder "
                        "instead of a generated layout; the mesh must be in that scene's units")
    p.add_argument("--supersample", type=int, default=2,
                   help="s x s rays per pixel for anti-aliased masks (default: 2)")
    p.add_argument("--light", type=float, nargs=3, metavar=("X", "Y", "Z"), action="append",
                   help="a directional light, pointing towards the light in world space; repeat it for "
                        "several, view i then being lit by light i mod L (default: a headlight per view)")
    p.add_argument("--face-normals", action="store_true", help="flat face normals instead of smooth ones")
    p.add_argument("--crease-angle", type=float, default=60.0, metavar="DEG",
                   help="smooth normals stay sharp across edges sharper than this (default: 60; "
                        "180 smooths across every edge)")
    p.add_argument("--groups", metavar="NAMES",
                   help="render only these comma-separated OBJ groups (e.g. body,helper-skirt of a MakeHuman "
                        "base mesh, whose helper geometry is hidden inside the skin)")
    p.add_argument("--close-holes", action="store_true",
                   help="cap the mesh's boundary loops (open scans) and render the solid; the capped "
                        "mesh is written as OUTPUT/closed_mesh.ply, the ground truth to evaluate against")
    p.add_argument("--normal-format", choices=["png", "npy"], default="png",
                   help="16-bit PNG or float32 .npy normal maps (default: png)")
    _add_common(p)

    p = sub.add_parser("import", help="convert another layout (neus, middlebury) into a scene folder",
                       epilog=EPILOG_IMPORT, formatter_class=formatter)
    p.add_argument("format", choices=["neus", "middlebury"], help="layout of SRC")
    p.add_argument("source", help="folder in that layout")
    p.add_argument("-o", "--output", required=True, help="scene folder to write")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="middlebury: background threshold on the brightest channel, 0-1 (default: 0.1)")
    _add_common(p)

    p = sub.add_parser("fit", help="multi-view reconstruction of a scene folder (or NeuS folder)",
                       epilog=EPILOG_FIT, formatter_class=formatter)
    p.add_argument("scene", help="scene folder (or NeuS folder)")
    p.add_argument("-o", "--output", required=True, help="folder for mesh.ply, checkpoint.pt, log.jsonl")
    p.add_argument("--method", default=methods.DEFAULT_FIT, choices=methods.names("fit"),
                   help=f"{methods.help_text('fit')} (default: {methods.DEFAULT_FIT})")
    p.add_argument("--schedule", choices=["plain", "greedy"],
                   help="sdfdiff: random pixels of all views per step (plain, default) or SDFDiff's "
                        "per-view greedy updates (the same as --set schedule=...)")
    p.add_argument("--iters", type=int, help="iterations in all (default: the method's, " + ", ".join(
        f"{name} {methods.get(name, 'fit').default_iters}" for name in methods.names("fit")) + ")")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting of the method (repeatable; lists comma-separated), e.g. "
                        "--set lr=0.05 --set resolutions=16,32,64,128; the fit's report lists them all")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop after this much optimisation time")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--resolution", type=int, default=256,
                   help="marching-cubes resolution (default: 256; tetsdf meshes its own grid)")
    p.add_argument("--gt", metavar="MESH", help="ground-truth mesh in the scene's input units: adds metrics")
    _add_common(p)

    p = sub.add_parser("extract", help="mesh from a fitted field (a fit's checkpoint) at a chosen resolution",
                       epilog=EPILOG_EXTRACT, formatter_class=formatter)
    p.add_argument("checkpoint", help="checkpoint.pt written by zerolevel fit")
    p.add_argument("-o", "--output", required=True, help="mesh file to write (.ply, .obj, ...)")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes resolution (default: 256)")
    _add_common(p)

    p = sub.add_parser("info", help="check a scene folder and summarise it",
                       epilog=EPILOG_INFO, formatter_class=formatter)
    p.add_argument("scene", help="scene folder (or NeuS folder)")
    _add_common(p)

    p = sub.add_parser("eval", help="compare a predicted mesh with the ground truth",
                       epilog=EPILOG_EVAL, formatter_class=formatter)
    p.add_argument("pred", help="predicted mesh")
    p.add_argument("gt", help="ground-truth mesh")
    p.add_argument("--tau", type=float, nargs="+", default=[0.005, 0.0025],
                   help="F-score thresholds as fractions of the GT bounding-box diagonal (default: 0.005 0.0025)")
    p.add_argument("--points", type=int, default=200_000, help="surface samples per mesh (default: 200000)")
    p.add_argument("--iou", type=int, metavar="N", help="also volumetric IoU on an N^3 grid")
    p.add_argument("--json", help="write the metrics as JSON to this file")
    _add_common(p)

    p = sub.add_parser("demo", help="the main job on the bundled example, end to end, with a report",
                       epilog=EPILOG_DEMO, formatter_class=formatter)
    p.add_argument("-o", "--output", required=True, help="folder for the scene, mesh and report")
    p.add_argument("--views", type=int, default=24, help="number of views (default: 24)")
    p.add_argument("--res", type=int, default=128, help="image resolution (default: 128)")
    p.add_argument("--iters", type=int, default=400, help="fit iterations (default: 400)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop the fit after this much time")
    p.add_argument("--grid", type=int, default=192, help="extraction resolution (default: 192)")
    _add_common(p)
    _add_dataset_parser(sub, formatter)
    _add_learn_parsers(sub, formatter)
    return parser


# ---------------------------------------------------------------------------- verbs
def cmd_render(args: argparse.Namespace) -> None:
    from .data import example_mesh_path
    from .atomic import atomic_path
    from .geometry.mesh import close_holes, load_mesh
    from .pipeline import render_scene

    mesh_path = Path(args.mesh) if args.mesh else example_mesh_path()
    _check_positive(args, "views", "res", "supersample")
    groups = [name.strip() for name in args.groups.split(",") if name.strip()] if args.groups else None
    mesh = load_mesh(mesh_path, groups=groups)
    if args.close_holes:
        mesh = close_holes(mesh)
    cameras_of = _read_scene_cameras(args.cameras) if args.cameras else None
    scene = render_scene(mesh, cameras_of=cameras_of, views=args.views, resolution=args.res, layout=args.layout,
                         distance=args.distance, fov_deg=args.fov, elevation_deg=args.elevation,
                         supersample=args.supersample, smooth=not args.face_normals, light=args.light,
                         crease_deg=args.crease_angle,
                         progress=not args.quiet, source=str(mesh_path))
    scene.write(args.output, normal_format=args.normal_format)
    if args.close_holes:
        with atomic_path(Path(args.output) / CLOSED_MESH) as tmp:
            mesh.export(tmp, file_type="ply")
    view = scene.views[0]
    print(f"wrote {args.output}: {len(scene.views)} views {view.width}x{view.height} "
          f"({', '.join(sorted(scene.modalities()))}) of {mesh_path.name}"
          + (f"; capped mesh {Path(args.output) / CLOSED_MESH}" if args.close_holes else ""))


def _read_scene_cameras(path: str):
    from .scene import read_scene

    return read_scene(path, load_images=False)


def cmd_import(args: argparse.Namespace) -> None:
    from .importers import import_middlebury, import_neus

    if not Path(args.source).is_dir():
        raise InputError("no such folder", args.source)
    if args.format == "neus":
        scene = import_neus(args.source)
    else:
        scene = import_middlebury(args.source, threshold=args.threshold)
    scene.write(args.output)
    print(f"wrote {args.output}: {len(scene.views)} views ({', '.join(sorted(scene.modalities()))}) "
          f"from {args.format} folder {args.source}")


def cmd_fit(args: argparse.Namespace) -> None:
    from .pipeline import run_fit
    from .settings import parse_assignments

    _check_positive(args, "resolution")
    if args.iters is not None:
        _check_positive(args, "iters")
    settings = parse_assignments(args.set)
    if args.schedule:
        settings = {"schedule": args.schedule, **settings}
    run_fit(args.scene, Path(args.output), method=args.method, iters=args.iters, budget_s=args.budget,
            resume=args.resume, resolution=args.resolution, gt_path=args.gt, device=args.device,
            seed=args.seed, progress=not args.quiet, settings=settings)


def cmd_extract(args: argparse.Namespace) -> None:
    from .pipeline import run_extract

    _check_positive(args, "resolution")
    mesh = run_extract(args.checkpoint, args.output, resolution=args.resolution, device=args.device,
                       progress=not args.quiet)
    print(f"wrote {args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")


def cmd_info(args: argparse.Namespace) -> None:
    from .scene import read_scene

    scene = read_scene(args.scene)
    sizes = sorted({(v.width, v.height) for v in scene.views})
    scale = abs(np.linalg.det(scene.to_world[:3, :3])) ** (1 / 3)
    coverage = [float(v.mask.mean()) for v in scene.views if v.mask is not None]
    print(f"{args.scene}: {len(scene.views)} views, size {' '.join(f'{w}x{h}' for w, h in sizes)}")
    print(f"  modalities   {', '.join(sorted(scene.modalities())) or 'none'}")
    print(f"  to_world     scale {scale:.6g}, centre {np.round(scene.to_world[:3, 3], 6).tolist()}")
    if coverage:
        print(f"  mask cover   {min(coverage):.1%} - {max(coverage):.1%} of each image")


def cmd_eval(args: argparse.Namespace) -> None:
    from .atomic import write_json
    from .geometry.mesh import load_mesh
    from .metrics import evaluate, format_table

    pred, gt = load_mesh(args.pred), load_mesh(args.gt)
    if any(t <= 0 for t in args.tau):
        raise InputError("--tau values must be positive")
    with warnings.catch_warnings(record=True) as caught:  # e.g. "not watertight": one line each
        warnings.simplefilter("always")
        result = evaluate(pred, gt, taus=tuple(args.tau), n_points=args.points,
                          iou_resolution=args.iou, seed=args.seed)
    for warning in caught:
        print(f"zerolevel eval: warning: {warning.message}", file=sys.stderr)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)


def cmd_demo(args: argparse.Namespace) -> None:
    from .pipeline import run_demo

    _check_positive(args, "views", "res", "iters", "grid")
    run_demo(Path(args.output), views=args.views, resolution=args.res, iters=args.iters,
             budget_s=args.budget, grid=args.grid, device=args.device, progress=not args.quiet)


# ---------------------------------------------------------------------------- dataset (single-view learning)
EPILOG_DATASET = """examples:
  zerolevel dataset --generate all --count 200 -o shapes     # 6 categories x 200 objects, 24 views at 64x64
  zerolevel dataset --generate chair,table --count 50 -o small --views 8 --res 32 --splits 0.7,0.15,0.15
  zerolevel dataset models/chair models/table -o mine        # mesh files; category = their parent folder
  zerolevel dataset --generate all --count 200 -o shapes     # the same command again resumes or reuses it

The folder: dataset.json, {train,val,test}/images.npy (N, V, H, W, 4) uint8 RGBA, voxels.npy (N, 32, 32, 32)
bool, objects.json, meshes/<id>.ply (normalised: bounding-box diagonal 1, centred); read it with
zerolevel.learn.dataset.load_split. Objects are cached in DATASET/.parts (delete it once you are done).
--threads N renders N objects at a time in worker processes; --seed draws the shapes and the splits.
"""


def _add_dataset_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("dataset", help="render many objects from one ring of cameras, for single-view learning",
                       epilog=EPILOG_DATASET, formatter_class=formatter)
    p.add_argument("meshes", nargs="*", metavar="MESHES",
                   help="mesh files, or folders searched for them (category: the file's parent folder)")
    p.add_argument("--generate", metavar="CATEGORIES",
                   help="procedural shapes instead: comma-separated categories "
                        "(airplane, car, chair, lamp, table, vase) or all")
    p.add_argument("--count", type=int, default=100, help="objects per category with --generate (default: 100)")
    p.add_argument("-o", "--output", required=True, help="dataset folder to write (or to resume)")
    p.add_argument("--views", type=int, default=24, help="cameras on the ring, 360/views degrees apart (default: 24)")
    p.add_argument("--res", type=int, default=64, help="image width and height in pixels (default: 64)")
    p.add_argument("--voxels", type=int, default=32, help="occupancy grid cells per axis (default: 32)")
    p.add_argument("--supersample", type=int, default=2,
                   help="s x s rays per pixel for the anti-aliased alpha (default: 2)")
    p.add_argument("--splits", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of each category's objects per split (default: 0.8,0.1,0.1)")
    _add_common(p)


def cmd_dataset(args: argparse.Namespace) -> None:
    from .learn.dataset import DatasetSettings, check_fractions, generated_sources, mesh_sources, write_dataset
    from .learn.shapes import CATEGORIES, GENERATOR_VERSION

    if bool(args.meshes) == bool(args.generate):
        raise InputError("give mesh files or folders, or --generate CATEGORIES (one of the two)")
    _check_positive(args, "views", "res", "voxels", "supersample", "count")
    try:
        fractions = check_fractions([float(f) for f in args.splits.split(",")])
    except (ValueError, InputError):
        raise InputError(f"--splits must be three fractions TRAIN,VAL,TEST >= 0 summing to 1 with TRAIN > 0, "
                         f"got {args.splits!r}") from None
    settings = DatasetSettings(views=args.views, resolution=args.res, voxels=args.voxels,
                               supersample=args.supersample)
    if args.generate:
        names = [name.strip() for name in args.generate.split(",") if name.strip()]
        categories = list(CATEGORIES) if names == ["all"] else names
        sources = generated_sources(categories, args.count, args.seed)
        source_info = {"kind": "generated", "generator": "zerolevel.learn.shapes",
                       "generator_version": GENERATOR_VERSION, "categories": categories, "count": args.count}
    else:
        sources = mesh_sources(args.meshes)
        source_info = {"kind": "meshes", "inputs": list(args.meshes)}
    summary = write_dataset(args.output, sources, settings, fractions, seed=args.seed, workers=args.threads,
                            progress=not args.quiet, source_info=source_info)
    splits = summary.info["splits"]
    print(f"wrote {args.output}: {len(sources)} objects, {len(summary.info['categories'])} categories "
          f"(train {splits['train']}, val {splits['val']}, test {splits['test']}), {args.views} views "
          f"{args.res}x{args.res}, voxels {args.voxels}^3; {summary.rendered} rendered, "
          f"{summary.reused} from the cache, {summary.seconds:.1f} s")


# ---------------------------------------------------------------------------- single-view networks
MESH_FORMATS = ("ply", "obj", "stl", "off", "glb")  # what predict writes, by the output's extension

EPILOG_TRAIN = """examples:
  zerolevel dataset --generate all --count 200 -o shapes
  zerolevel train softras shapes -o run --budget 3600          # SoftRas's network and losses for an hour
  zerolevel train softras shapes -o run --resume --iters 20000 # continue it, up to 20000 iterations in all
  zerolevel train softras shapes -o run_resnet --encoder resnet --epochs 40 --batch-size 32
  zerolevel train softras shapes -o run --set eval_every=500 --set val_objects=20 --set checkpoint_every=200
  torchrun --nproc_per_node 2 -m zerolevel train softras shapes -o run --threads 1   # 2 processes, gloo (CPU)
  torchrun --nproc_per_node 4 -m zerolevel train softras shapes -o run --device cuda # a GPU per process, NCCL

RUN gets checkpoint.pt (resumable: an interrupted run continues exactly), log.jsonl (losses, validation IoU),
training.svg (their curves) and summary.json. The defaults are SoftRas's (Adam lr 1e-4, batch 64, 250k
iterations, cross-render, lr and sigma x0.3 from 150k): on a CPU stop earlier with --budget, --iters or --epochs
(an epoch: as many samples as the train split has objects). Validation (voxel IoU on the val split) runs once
per epoch unless --set eval_every=N. --resume keeps the run's own settings; options given with it may change
only iterations, epochs, budget and the validation / checkpoint / log intervals. --set KEY=VALUE sets any field
of zerolevel.learn.train.TrainConfig, after the options (an unknown key lists them).
Distributed: under torchrun (or `python -m torch.distributed.run`) every process draws the same global batch and
trains on its share (--batch-size is the global batch, divisible by the process count); gradients are averaged,
BatchNorm statistics are global, and only rank 0 writes RUN and prints. Without --threads each process takes
its share of the CPUs.
"""
EPILOG_PREDICT = """examples:
  zerolevel predict run chair.png -o chair.ply                 # RGBA PNG, alpha = the object's silhouette
  zerolevel predict run/checkpoint.pt photo.jpg --mask photo_mask.png -o chair.obj

The image must have the network's size (that of its training set, e.g. 64x64; the error names it) and frame
the object as the dataset's ring cameras do (centred, seen from 30 degrees above). RGB is multiplied by the
alpha (the dataset's black background). The mesh (642 vertices, 1280 faces, closed) is in the dataset's
normalised frame: bounding-box centre at the origin, diagonal about 1 (inside [-0.5, 0.5]^3), y up, front
towards -z, whichever view the image shows.
"""
EPILOG_EVAL_SET = """examples:
  zerolevel eval-set run shapes                       # test split, all views: the published protocol
  zerolevel eval-set run shapes --views 4 --surface-views 2 --json run/test_metrics.json
  zerolevel eval-set run shapes --split val --surface-views 0        # voxel IoU only
  zerolevel eval-set run shapes --views 1 --surface-views 0 --gallery run/gallery.png   # a look at it

Voxel IoU at 32^3 (SoftRas's protocol): a mesh is predicted from every view of every object and voxelised on
the dataset's grid as the objects were (the cells its surface passes through and the cells they enclose); a
category's IoU is the mean over its (object, view) pairs, and the mean is taken over categories. Chamfer and
F-score (tau in fractions of the GT bounding-box diagonal, as `zerolevel eval`) against each object's
normalised mesh, on the first --surface-views views evaluated. The mean-shape row is a baseline: the train
split's voxel occupancy frequency thresholded (at the threshold, near 0.5, that fits the train split best),
the same shape whatever the image.
"""


def _add_learn_parsers(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("train", help="train a single-view network (image -> mesh) on a dataset folder",
                       epilog=EPILOG_TRAIN, formatter_class=formatter)
    p.add_argument("method", choices=methods.names("train"), help=methods.help_text("train"))
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (zerolevel dataset)")
    p.add_argument("-o", "--output", required=True, metavar="RUN",
                   help="run folder for checkpoint.pt, log.jsonl, training.svg, summary.json")
    p.add_argument("--encoder", choices=["baseline", "resnet", "attention"],
                   help="image encoder: SoftRas's three convolutions (baseline, default), residual blocks "
                        "(resnet), or convolutions with squeeze-and-excitation and self-attention (attention)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help="iterations in all (default: 250000, SoftRas's)")
    length.add_argument("--epochs", type=float, help="instead of --iters: passes over the train objects")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop after this much training time in all")
    p.add_argument("--batch-size", type=int, help="global batch of (object, two views) samples (default: 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 1e-4)")
    p.add_argument("--cross-render", action=argparse.BooleanOptionalAction, default=None,
                   help="render both views' meshes from both cameras (SoftRas's published variant, default), "
                        "or encode one view and render it from the other")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting (repeatable), e.g. --set eval_every=500 --set sigma=3e-5")
    _add_common(p)
    p.set_defaults(seed=None)  # a fresh run: 0; with --resume: the run's own

    p = sub.add_parser("predict", help="mesh from one image with a trained single-view network",
                       epilog=EPILOG_PREDICT, formatter_class=formatter)
    p.add_argument("run", metavar="RUN", help="run folder or its checkpoint.pt (zerolevel train)")
    p.add_argument("image", metavar="IMAGE", help="RGBA image (alpha = silhouette), or RGB with --mask")
    p.add_argument("-o", "--output", required=True, metavar="MESH",
                   help=f"mesh file to write ({', '.join('.' + f for f in MESH_FORMATS)})")
    p.add_argument("--mask", help="silhouette image, 8-bit, foreground > 127 (replaces any alpha)")
    _add_common(p)

    p = sub.add_parser("eval-set", help="score a trained single-view network on a dataset split (IoU, F-score)",
                       epilog=EPILOG_EVAL_SET, formatter_class=formatter)
    p.add_argument("run", metavar="RUN", help="run folder or its checkpoint.pt (zerolevel train)")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (zerolevel dataset)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score (default: test)")
    p.add_argument("--views", default="all", metavar="all|N",
                   help="views per object: all (the protocol, default) or N evenly spaced from view 0")
    p.add_argument("--surface-views", type=int, default=1, metavar="N",
                   help="Chamfer / F-score on the first N evaluated views of each object (default: 1; 0: none)")
    p.add_argument("--tau", type=float, nargs="+", default=[0.005, 0.0025],
                   help="F-score thresholds as fractions of the GT bounding-box diagonal (default: 0.005 0.0025)")
    p.add_argument("--points", type=int, default=100_000, help="surface samples per mesh (default: 100000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per network call (default: 32)")
    p.add_argument("--json", help="write the results (per category and per object) as JSON to this file")
    p.add_argument("--gallery", metavar="PNG", help="write a picture of predictions beside the truth: per object, "
                   "the input, the prediction from it and from +90/+180 degrees, the truth from there")
    p.add_argument("--gallery-objects", type=int, default=2, metavar="N",
                   help="objects per category in the gallery (default: 2)")
    _add_common(p)


def _torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, processes on this machine) from torchrun's environment (0, 1, 1 without it)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return int(env.get("RANK", "0")), world, int(env.get("LOCAL_WORLD_SIZE", str(world)))


def cmd_train(args: argparse.Namespace) -> None:
    from .optim.loop import CHECKPOINT, load_checkpoint
    from .settings import parse_assignments, run_settings

    parts = methods.get(args.method, "train").parts()
    overrides = parse_assignments(args.set)
    for name in ("iters", "epochs", "budget", "batch_size", "lr"):
        if getattr(args, name) is not None:
            _check_positive(args, name)
    run = Path(args.output)
    has_checkpoint = (run / CHECKPOINT).is_file()
    if has_checkpoint and not args.resume:
        raise InputError("holds a trained network already: add --resume to continue it, or choose another "
                         "folder", run)
    saved = load_checkpoint(run)["state"].get("config") if has_checkpoint else None
    if saved is not None and args.iters is not None:
        saved = {**saved, "epochs": None}  # --iters replaces a resumed run's epochs
    given = {"encoder": args.encoder, "iterations": args.iters, "epochs": args.epochs, "budget_s": args.budget,
             "batch_size": args.batch_size, "lr": args.lr, "cross_render": args.cross_render, "seed": args.seed}
    config = run_settings(parts.config, saved, given, overrides, str(run / CHECKPOINT))
    rank, world, local_world = _torchrun_env()
    if config.batch_size % world:
        raise InputError(f"--batch-size {config.batch_size} must be divisible by the {world} processes")
    threads = args.threads
    if local_world > 1 and threads == default_threads():  # share the machine's CPUs between its processes
        threads = max(1, threads // local_world)
    if rank:
        args.quiet = True  # only rank 0 reports
    result = parts.train(args.dataset, run, config, args.device, resume=args.resume, progress=not args.quiet,
                         threads=threads)
    if rank == 0:
        print(f"{result.summary()}; wrote {run / CHECKPOINT}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .atomic import atomic_path
    from .images import read_rgba
    from .learn.predict import load_run

    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise InputError(f"unknown mesh format {suffix!r}: use one of {', '.join('.' + f for f in MESH_FORMATS)}",
                         args.output)
    parts = methods.get(load_run(args.run)["name"], "train").parts()
    net = parts.load_model(args.run, args.device)
    size = net.config.image_size
    rgba = read_rgba(args.image, args.mask)
    height, width = rgba.shape[:2]
    if (height, width) != (size, size):
        raise InputError(f"the network takes {size}x{size} images (its training set's size), this one is "
                         f"{width}x{height}: crop it to a square around the object and resize it to {size}x{size}",
                         args.image)
    silhouette = args.mask or args.image
    foreground = rgba[..., 3] > 127
    if not foreground.any():
        raise InputError("no foreground: the silhouette (alpha, or mask > 127) is empty", silhouette)
    if foreground.all():
        raise InputError("the silhouette covers the whole image: the object must have background around it",
                         silhouette)
    rgba[..., :3] = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)  # premultiplied
    mesh = parts.predict(net, rgba, source=args.image)
    with atomic_path(args.output) as tmp:
        mesh.export(tmp, file_type=suffix)
    print(f"wrote {args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, in the dataset's "
          f"normalised frame (centred, bounding-box diagonal ~1, y up)")


def cmd_eval_set(args: argparse.Namespace) -> None:
    from .atomic import check_output_file, write_json
    from .learn.evaluate import evaluate_run, format_table
    from .learn.gallery import COLUMNS

    views = None
    if args.views != "all":
        try:
            views = int(args.views)
        except ValueError:
            views = 0
        if views <= 0:
            raise InputError(f"--views must be all or a positive number, got {args.views!r}")
    _check_positive(args, "points", "batch_size", "gallery_objects")
    if args.surface_views < 0:
        raise InputError(f"--surface-views must be 0 or more, got {args.surface_views}")
    if any(t <= 0 for t in args.tau):
        raise InputError("--tau values must be positive")
    for output in (args.json, args.gallery):
        if output:
            check_output_file(output)  # before the evaluation, not after it
    result = evaluate_run(args.run, args.dataset, split=args.split, views=views, surface_views=args.surface_views,
                          taus=tuple(args.tau), points=args.points, batch_size=args.batch_size,
                          device=args.device, seed=args.seed, progress=not args.quiet,
                          gallery=args.gallery, gallery_objects=args.gallery_objects)
    print(format_table(result))
    if args.gallery:
        print(f"wrote {args.gallery}: per row {', '.join(COLUMNS)}")
    if args.json:
        write_json(args.json, result)


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


VERBS = {"render": cmd_render, "import": cmd_import, "fit": cmd_fit, "extract": cmd_extract,
         "info": cmd_info, "eval": cmd_eval, "demo": cmd_demo}
VERBS["dataset"] = cmd_dataset
VERBS.update({"train": cmd_train, "predict": cmd_predict, "eval-set": cmd_eval_set})


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.threads <= 0:
        print("zerolevel: error: --threads must be positive", file=sys.stderr)
        return 2
    configure_torch(args.threads, 0 if args.seed is None else args.seed)  # None: train --resume keeps its own
    from .optim.loop import DivergedError

    start = time.perf_counter()
    try:
        VERBS[args.verb](args)
    except InputError as exc:
        print(f"zerolevel {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:  # not bad input: the optimisation failed; say so in one line
        print(f"zerolevel {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"zerolevel {args.verb}: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
