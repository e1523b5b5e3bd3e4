"""The verbs of scenes and multi-view fits: render, import, fit, extract, info, eval, demo."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .. import methods
from ..errors import InputError
from .common import add_common, check_positive

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
  zerolevel fit spot_scene -o spot_fit --budget 30         # the default fit, done in about 30 s
  zerolevel fit DiLiGenT-MV/bearPNG -o bear_fit --budget 60 # a NeuS folder as it is
  zerolevel fit spot_scene -o spot_fit --method supernormal --gt spot.obj
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
  zerolevel demo -o demo_out       # render Spot, fit it (default fit), evaluate, write demo_out/report.html
  zerolevel demo -o demo_out --budget 60 # a longer fit
"""


def add_parsers(sub: argparse._SubParsersAction, formatter: type) -> None:
    """The scene and fit verbs' parsers."""

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
    add_common(p)

    p = sub.add_parser("import", help="convert another layout (neus, middlebury) into a scene folder",
                       epilog=EPILOG_IMPORT, formatter_class=formatter)
    p.add_argument("format", choices=["neus", "middlebury"], help="layout of SRC")
    p.add_argument("source", help="folder in that layout")
    p.add_argument("-o", "--output", required=True, help="scene folder to write")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="middlebury: background threshold on the brightest channel, 0-1 (default: 0.1)")
    add_common(p)

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
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="seconds for the whole command: the fit's schedule is fitted into what is left after "
                        "loading (with --iters: stop the optimisation after this much time)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--resolution", type=int, default=256,
                   help="marching-cubes resolution (default: 256; tetsdf meshes its own grid)")
    p.add_argument("--gt", metavar="MESH", help="ground-truth mesh in the scene's input units: adds metrics")
    add_common(p)

    p = sub.add_parser("extract", help="mesh from a fitted field (a fit's checkpoint) at a chosen resolution",
                       epilog=EPILOG_EXTRACT, formatter_class=formatter)
    p.add_argument("checkpoint", help="checkpoint.pt written by zerolevel fit")
    p.add_argument("-o", "--output", required=True, help="mesh file to write (.ply, .obj, ...)")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes resolution (default: 256)")
    add_common(p)

    p = sub.add_parser("info", help="check a scene folder and summarise it",
                       epilog=EPILOG_INFO, formatter_class=formatter)
    p.add_argument("scene", help="scene folder (or NeuS folder)")
    add_common(p)

    p = sub.add_parser("eval", help="compare a predicted mesh with the ground truth",
                       epilog=EPILOG_EVAL, formatter_class=formatter)
    p.add_argument("pred", help="predicted mesh")
    p.add_argument("gt", help="ground-truth mesh")
    p.add_argument("--tau", type=float, nargs="+", default=[0.005, 0.0025],
                   help="F-score thresholds as fractions of the GT bounding-box diagonal (default: 0.005 0.0025)")
    p.add_argument("--points", type=int, default=200_000, help="surface samples per mesh (default: 200000)")
    p.add_argument("--iou", type=int, metavar="N", help="also volumetric IoU on an N^3 grid")
    p.add_argument("--json", help="write the metrics as JSON to this file")
    add_common(p)

    p = sub.add_parser("demo", help="the main job on the bundled example, end to end, with a report",
                       epilog=EPILOG_DEMO, formatter_class=formatter)
    p.add_argument("-o", "--output", required=True, help="folder for the scene, mesh and report")
    p.add_argument("--views", type=int, default=32, help="number of views (default: 32)")
    p.add_argument("--res", type=int, default=256, help="image resolution (default: 256)")
    p.add_argument("--iters", type=int, help="fit iterations (default: as many as --budget allows)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="seconds for the fit, its schedule fitted into them (default: 30 without --iters; "
                        "with --iters: stop it after them)")
    p.add_argument("--grid", type=int, default=256, help="extraction resolution (default: 256)")
    add_common(p)


def cmd_render(args: argparse.Namespace) -> None:
    from ..data import example_mesh_path
    from ..atomic import atomic_path
    from ..geometry.mesh import close_holes, load_mesh
    from ..pipeline import render_scene

    mesh_path = Path(args.mesh) if args.mesh else example_mesh_path()
    check_positive(args, "views", "res", "supersample")
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
    from ..importers import load_scene

    return load_scene(path, load_images=False)


def cmd_import(args: argparse.Namespace) -> None:
    from ..importers import import_middlebury, import_neus

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
    from ..pipeline import run_fit
    from .common import STARTED
    from ..settings import parse_assignments

    check_positive(args, "resolution")
    if args.iters is not None:
        check_positive(args, "iters")
    settings = parse_assignments(args.set)
    if args.schedule:
        settings = {"schedule": args.schedule, **settings}
    run_fit(args.scene, Path(args.output), method=args.method, iters=args.iters, budget_s=args.budget,
            resume=args.resume, resolution=args.resolution, gt_path=args.gt, device=args.device,
            seed=args.seed, progress=not args.quiet, settings=settings, started=STARTED)


def cmd_extract(args: argparse.Namespace) -> None:
    from ..pipeline import run_extract

    check_positive(args, "resolution")
    mesh = run_extract(args.checkpoint, args.output, resolution=args.resolution, device=args.device,
                       progress=not args.quiet)
    print(f"wrote {args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")


def cmd_info(args: argparse.Namespace) -> None:
    from ..importers import load_scene

    scene = load_scene(args.scene)
    sizes = sorted({(v.width, v.height) for v in scene.views})
    scale = abs(np.linalg.det(scene.to_world[:3, :3])) ** (1 / 3)
    coverage = [float(v.mask.mean()) for v in scene.views if v.mask is not None]
    print(f"{args.scene}: {len(scene.views)} views, size {' '.join(f'{w}x{h}' for w, h in sizes)}")
    print(f"  modalities   {', '.join(sorted(scene.modalities())) or 'none'}")
    print(f"  to_world     scale {scale:.6g}, centre {np.round(scene.to_world[:3, 3], 6).tolist()}")
    if coverage:
        print(f"  mask cover   {min(coverage):.1%} - {max(coverage):.1%} of each image")


def cmd_eval(args: argparse.Namespace) -> None:
    from ..atomic import write_json
    from ..geometry.mesh import load_mesh
    from ..metrics import evaluate, format_table

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
    from ..pipeline import run_demo

    check_positive(args, "views", "res", "grid")
    if args.iters is not None:
        check_positive(args, "iters")
    budget = 30.0 if args.iters is None and args.budget is None else args.budget
    run_demo(Path(args.output), views=args.views, resolution=args.res, iters=args.iters,
             budget_s=budget, grid=args.grid, device=args.device, progress=not args.quiet)


VERBS = {"render": cmd_render, "import": cmd_import, "fit": cmd_fit, "extract": cmd_extract,
         "info": cmd_info, "eval": cmd_eval, "demo": cmd_demo}
