"""The verbs of single-view learning: dataset, train, predict, predict-normals, eval-set."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np

from .. import methods
from ..errors import InputError
from .common import add_common, check_positive, default_threads

# ---------------------------------------------------------------------------- dataset (single-view learning)
# The dataset each network is made for (`--for`): image size and lighting; --res / --lighting override them.
DATASET_DEFAULTS: dict[str, dict] = {
    "softras": {"resolution": 64, "lighting": "headlight"},  # SoftRas's rendered ShapeNet
    "tetnet": {"resolution": 128, "lighting": "varied"},  # sharper views; shading that varies per object and view
}

EPILOG_DATASET = """examples:
  zerolevel dataset --generate all --count 200 -o shapes     # 6 categories x 200 objects, 24 views at 64x64
  zerolevel dataset --generate all --count 200 -o shapes128 --for tetnet   # 128x128, varied lighting
  zerolevel dataset --generate chair,table --count 50 -o small --views 8 --res 32 --splits 0.7,0.15,0.15
  zerolevel dataset models/chair models/table -o mine        # mesh files; category = their parent folder
  zerolevel dataset models/chair -o lit --lighting varied    # 64x64 with varied lighting
  zerolevel dataset --generate all --count 200 -o shapes     # the same command again resumes or reuses it
  zerolevel dataset --generate head --count 100 -o heads_ring --for tetnet   # generated heads on the ring
  zerolevel dataset --generate heads --count 500 -o heads    # photographs of heads, for phorhum (below)

The folder (version 2): dataset.json, {train,val,test}/images.npy (N, V, H, W, 4) uint8 RGBA, normals.npy
(N, V, H, W, 3) int8 world-space normals round(127 * n) (0 on the background), voxels.npy (N, 32, 32, 32) bool,
objects.json, meshes/<id>.ply (normalised: bounding-box diagonal 1, centred); read it with
zerolevel.learn.dataset.folder.load_split. Objects are cached in DATASET/.parts (delete it once you are done).
--for NETWORK picks the image size and lighting the network is trained with: softras (default): --res 64
--lighting headlight; tetnet: --res 128 --lighting varied. Lighting headlight: grey, a light along each camera's
axis; varied: a random colour per object, a random light (tilted up to 45 degrees from the camera's axis) and
ambient per view, the same on every rerun.
--threads N renders N objects at a time in worker processes; --seed draws the shapes and the splits.
--generate heads writes the head dataset instead (zerolevel.learn.dataset.heads): per head (a random identity,
expression and skin of the shipped ICT-FaceKit model) --views (default 4) near-frontal photographs at --res
(default 128) with random cameras, coloured lights and backgrounds, with albedo, back albedo, normals and depth,
and the 3D sample sets of the PHORHUM thesis; split by identity.
"""


def _add_dataset_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("dataset", help="render many objects from one ring of cameras, for single-view learning",
                       epilog=EPILOG_DATASET, formatter_class=formatter)
    p.add_argument("meshes", nargs="*", metavar="MESHES",
                   help="mesh files, or folders searched for them (category: the file's parent folder)")
    p.add_argument("--generate", metavar="CATEGORIES",
                   help="procedural shapes instead: comma-separated categories "
                        "(airplane, car, chair, lamp, table, vase, head) or all (all but head)")
    p.add_argument("--count", type=int, default=100, help="objects per category with --generate (default: 100)")
    p.add_argument("-o", "--output", required=True, help="dataset folder to write (or to resume)")
    p.add_argument("--views", type=int, help="cameras on the ring, 360/views degrees apart (default: 24); "
                                              "photographs per head with --generate heads (default: 4)")
    table = "; ".join(f"{name}: {d['resolution']}, {d['lighting']}" for name, d in DATASET_DEFAULTS.items())
    p.add_argument("--for", dest="network", choices=list(DATASET_DEFAULTS), default="softras",
                   help=f"the network the dataset is for, which picks the defaults of --res and --lighting: "
                        f"{table} (default: softras)")
    p.add_argument("--res", type=int, help="image width and height in pixels (default: by --for)")
    p.add_argument("--lighting", choices=["headlight", "varied"],  # settings.LIGHTINGS; the parser imports no numpy
                   help="headlight: grey, lit along each camera's axis; varied: a colour per object, a tilted "
                        "light and ambient per view (default: by --for)")
    p.add_argument("--voxels", type=int, default=32, help="occupancy grid cells per axis (default: 32)")
    p.add_argument("--supersample", type=int, default=2,
                   help="s x s rays per pixel for the anti-aliased alpha (default: 2)")
    p.add_argument("--splits", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of each category's objects per split (default: 0.8,0.1,0.1)")
    add_common(p)


def dataset_defaults(network: str, res: int | None = None, lighting: str | None = None) -> dict:
    """{"resolution", "lighting"} of a dataset for `network` (`DATASET_DEFAULTS`), explicit values winning."""
    if network not in DATASET_DEFAULTS:
        raise InputError(f"--for must be one of {', '.join(DATASET_DEFAULTS)}, got {network!r}")
    given = {"resolution": res, "lighting": lighting}
    return {key: value if given[key] is None else given[key] for key, value in DATASET_DEFAULTS[network].items()}


def cmd_dataset(args: argparse.Namespace) -> None:
    from ..learn.dataset.settings import DatasetSettings
    from ..learn.dataset.sources import generated_sources, mesh_sources
    from ..learn.dataset.write import write_dataset
    from ..learn.shapes import CATEGORIES, GENERATOR_VERSION

    if bool(args.meshes) == bool(args.generate):
        raise InputError("give mesh files or folders, or --generate CATEGORIES (one of the two)")
    if args.generate and args.generate.strip() == "heads":
        return _head_dataset(args)
    args.views = 24 if args.views is None else args.views
    defaults = dataset_defaults(args.network, args.res, args.lighting)
    args.res, args.lighting = defaults["resolution"], defaults["lighting"]
    check_positive(args, "views", "res", "voxels", "supersample", "count")
    fractions = _split_fractions(args.splits)
    settings = DatasetSettings(views=args.views, resolution=args.res, voxels=args.voxels,
                               supersample=args.supersample, lighting=args.lighting)
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
          f"{args.res}x{args.res} ({args.lighting}), voxels {args.voxels}^3; {summary.rendered} rendered, "
          f"{summary.reused} from the cache, {summary.seconds:.1f} s")


def _split_fractions(text: str) -> tuple[float, float, float]:
    """--splits TRAIN,VAL,TEST as three fractions (InputError naming the option otherwise)."""
    from ..learn.dataset.splits import check_fractions

    try:
        return check_fractions([float(f) for f in text.split(",")])
    except (ValueError, InputError):
        raise InputError(f"--splits must be three fractions TRAIN,VAL,TEST >= 0 summing to 1 with TRAIN > 0, "
                         f"got {text!r}") from None


def _head_dataset(args: argparse.Namespace) -> None:
    """`--generate heads`: the head dataset (`learn.dataset.heads`)."""
    from ..learn.dataset.heads import HeadDatasetSettings, write_head_dataset

    args.views = 4 if args.views is None else args.views
    args.res = 128 if args.res is None else args.res
    check_positive(args, "views", "res", "supersample", "count")
    fractions = _split_fractions(args.splits)
    settings = HeadDatasetSettings(views=args.views, resolution=args.res, supersample=args.supersample)
    summary = write_head_dataset(args.output, args.count, settings, fractions, seed=args.seed,
                                 workers=args.threads, progress=not args.quiet)
    splits = summary.info["splits"]
    print(f"wrote {args.output}: {args.count} heads (train {splits['train']}, val {splits['val']}, test "
          f"{splits['test']}), {args.views} photographs each at {args.res}x{args.res}; {summary.rendered} made, "
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
  zerolevel dataset --generate all --count 150 -o shapes128 --for tetnet   # with normal maps, 128x128
  zerolevel train tetnet shapes128 -o tetrun --budget 1800     # image -> tet-grid SDF, from normals + masks
  zerolevel train normals shapes128 -o normrun --budget 1800   # pix2pix: image -> normal map
  zerolevel train tetnet shapes128 -o tetrun2 --normals-from normrun   # tetnet on pix2pix's normal maps
  zerolevel train sdfnet shapes128 -o sdfrun --budget 1800     # image -> SDF lattices, sphere-traced (SDFDiff)

RUN gets checkpoint.pt (resumable: an interrupted run continues exactly), log.jsonl (losses, validation IoU),
training.svg (their curves) and summary.json. The defaults are SoftRas's (Adam lr 1e-4, batch 64, 250k
iterations, cross-render, lr and sigma x0.3 from 150k): on a CPU stop earlier with --budget, --iters or --epochs
(an epoch: as many samples as the train split has objects). tetnet (Wu et al.: SDF values on a 32^3 tet grid,
marching tetrahedra, rasterised normal maps and masks of two views per sample; zerolevel.learn.tetnet_train)
needs a dataset with normal maps (version 2) and defaults to Adam lr 3e-4, batch 16, 50k iterations; with
--normals-from RUN it trains on a normals run's predicted normal maps of the train split instead (Wu et al.).
sdfnet (SDFDiff: a 32^3 SDF lattice refined to 64^3, sphere-traced shaded images and soft silhouettes of two
views per sample, the coarse level alone for the first 5k iterations or half the --budget, whichever is sooner;
zerolevel.learn.sdfnet_train) reads the dataset's lighting record (dataset.json "light") for the shading: Adam
lr 3e-4, batch 16, 50k iterations; --set w_carve=20 adds the visual-hull carve term (off by default).
normals (pix2pix: U-Net generator, PatchGAN discriminator, L1 x100 + GAN; zerolevel.learn.pix2pix_train)
learns the normal maps of a version-2 dataset from its images: Adam lr 2e-4, betas 0.5, batch 16, 20k
iterations; its validation is the mean angular error in degrees. Validation (voxel IoU on the val split) runs once
per epoch unless --set eval_every=N. --resume keeps the run's own settings; options given with it may change
only iterations, epochs, budget and the validation / checkpoint / log intervals. --set KEY=VALUE sets any field
of the network's settings (zerolevel.learn.train.TrainConfig, learn.tetnet_train.TetNetTrainConfig,
learn.sdfnet_train.SDFNetTrainConfig, learn.pix2pix_train.NormalsTrainConfig), after the options (an unknown key lists them).
Distributed: under torchrun (or `python -m torch.distributed.run`) every process draws the same global batch and
trains on its share (--batch-size is the global batch, divisible by the process count); gradients are averaged,
BatchNorm statistics are global, and only rank 0 writes RUN and prints. Without --threads each process takes
its share of the CPUs.
"""
EPILOG_PREDICT = """examples:
  zerolevel predict run chair.png -o chair.ply                 # RGBA PNG, alpha = the object's silhouette
  zerolevel predict run/checkpoint.pt photo.jpg --mask photo_mask.png -o chair.obj
  zerolevel predict tetrun v0.png v8.png v16.png -o chair.ply  # 3 views of one object, predictions averaged
  zerolevel predict tetrun v0.png v8.png -o chair.ply --dataset shapes128 --views 0 8 --refine 20
  zerolevel predict tetrun v0.png -o chair.ply --dataset shapes128 --views 0 --refine 20 --normals n0.png

The image must have the network's size (that of its training set, e.g. 64x64; the error names it) and frame
the object as the dataset's ring cameras do (centred, seen from 30 degrees above). RGB is multiplied by the
alpha (the dataset's black background). The mesh is in the dataset's normalised frame: bounding-box centre at
the origin, diagonal about 1 (inside [-0.5, 0.5]^3), y up, front towards -z, whichever view the image shows;
SoftRas's has the template's 642 vertices and 1280 faces, the tet network's is its zero level set (closed).
Several images of one object: the networks predict in that frame from any view, so the predictions are fused
as they are: the tet network's SDF values by their max, the intersection of its solids (--fuse mean: their
average), SoftRas's vertex positions averaged.
--refine S: S more seconds of the multi-view tet-grid fit (zerolevel fit --method tetsdf) from the fused
prediction, to the images' silhouettes (expand / shrink, mask L2), with eikonal and curvature regularisers,
and to normal maps with --normals (one per image: world-space, 16-bit PNG rgb = (n + 1) / 2 as in scene
folders; e.g. from zerolevel predict-normals). The fit needs each image's camera: --dataset names the
network's dataset and --views each image's index on its ring (0 = the front, 360/V degrees apart).
"""
EPILOG_PREDICT_NORMALS = """examples:
  zerolevel predict-normals normrun chair.png -o chair_normals.png      # RGBA PNG, alpha = the object's silhouette
  zerolevel predict-normals normrun photo.jpg --mask photo_mask.png -o normals.npy

The image must have the network's size (its training set's, e.g. 128x128) and frame the object as the
dataset's ring cameras do. The normals are in the image's camera frame (OpenCV: x right, y down, z forward;
a scene.json with "normal_space": "camera" reads them), or in the dataset's world space for a network
trained with --set space=world; .png is the scenes' normal map (16-bit RGB, rgb = (n + 1) / 2, (0, 0, 0) on the
background, readable as a scene's normal/000.png), .npy float32 (H, W, 3) with 0 on the background.
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
A normals run (zerolevel train normals) gets the angular error of its normal maps instead: mean and median in
degrees over the foreground pixels of every evaluated view, and the % of pixels within 11.25, 22.5 and 30
degrees, beside the baseline of the train split's mean normal map per ring view (--views and --json apply).
"""


def _add_learn_parsers(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("train", help="train a single-view network (image -> mesh) on a dataset folder",
                       epilog=EPILOG_TRAIN, formatter_class=formatter)
    p.add_argument("method", choices=methods.names("train"), help=methods.help_text("train"))
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (zerolevel dataset)")
    p.add_argument("-o", "--output", required=True, metavar="RUN",
                   help="run folder for checkpoint.pt, log.jsonl, training.svg, summary.json")
    p.add_argument("--encoder", choices=["baseline", "resnet", "attention", "pix2pix"],
                   help="image encoder: SoftRas's three convolutions (baseline), residual blocks (resnet), "
                        "convolutions with squeeze-and-excitation and self-attention (attention), or pix2pix's "
                        "first four encoder levels (pix2pix); default: the network's own")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help="iterations in all (default: the network's: "
                        + ", ".join(f"{n} {methods.REGISTRY[n].default_iters}" for n in methods.names("train")) + ")")
    length.add_argument("--epochs", type=float, help="instead of --iters: passes over the train objects")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop after this much training time in all")
    p.add_argument("--batch-size", type=int, help="global batch of (object, two views) samples (default: the "
                   "network's own)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the network's own)")
    p.add_argument("--cross-render", action=argparse.BooleanOptionalAction, default=None,
                   help="render both views' meshes from both cameras (SoftRas's published variant, default), "
                        "or encode one view and render it from the other")
    p.add_argument("--normals-from", metavar="RUN", help="tetnet: train on the normal maps a normals run "
                   "(zerolevel train normals) predicts from the train split's images, not the dataset's")
    p.add_argument("--encoder-from", metavar="RUN", help="tetnet: start the pix2pix encoder from a normals run's "
                   "generator (its first four levels)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting (repeatable), e.g. --set eval_every=500 --set sigma=3e-5")
    add_common(p)
    p.set_defaults(seed=None)  # a fresh run: 0; with --resume: the run's own

    p = sub.add_parser("predict", help="mesh from one image (or several of one object) with a trained single-view "
                       "network, optionally refined by a tet-grid fit to the images", epilog=EPILOG_PREDICT,
                       formatter_class=formatter)
    p.add_argument("run", metavar="RUN", help="run folder or its checkpoint.pt (zerolevel train)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="RGBA image (alpha = silhouette), or RGB with --mask; several images of one object: their "
                        "predictions are fused (--fuse)")
    p.add_argument("-o", "--output", required=True, metavar="MESH",
                   help=f"mesh file to write ({', '.join('.' + f for f in MESH_FORMATS)})")
    p.add_argument("--mask", nargs="+", metavar="MASK",
                   help="silhouette image per IMAGE, 8-bit, foreground > 127 (replaces any alpha)")
    p.add_argument("--dataset", metavar="DATA", help="the network's dataset folder: its ring cameras (with --views)")
    p.add_argument("--views", type=int, nargs="+", metavar="K",
                   help="each IMAGE's camera: its view index on the dataset's ring (0 = the front); needed by --refine "
                        "and by a tet network with pixel-aligned features (train tetnet --set pixel=16)")
    p.add_argument("--normals", nargs="+", metavar="NORMALS",
                   help="world-space normal map per IMAGE for --refine (scene format: 16-bit PNG rgb = (n + 1) / 2, "
                        "as `zerolevel predict-normals` writes; or .npy / .exr)")
    p.add_argument("--refine", type=float, metavar="S",
                   help="then fit the tet grid to the images' masks (and --normals) for S seconds, starting from the "
                        "prediction (needs --dataset and --views)")
    p.add_argument("--fuse", choices=["mean", "max"],
                   help="how several images' predictions are fused: max of SDF values, the intersection of the "
                        "predicted solids (tetnet's default); mean of SDF values or of vertex positions "
                        "(softras's default and only choice)")
    add_common(p)

    p = sub.add_parser("predict-normals", help="normal map from one image with a trained normals network",
                       epilog=EPILOG_PREDICT_NORMALS, formatter_class=formatter)
    p.add_argument("run", metavar="RUN", help="run folder or its checkpoint.pt (zerolevel train normals)")
    p.add_argument("image", metavar="IMAGE", help="RGBA image (alpha = silhouette), or RGB with --mask")
    p.add_argument("-o", "--output", required=True, metavar="NORMALS", help="normal map to write (.png or .npy)")
    p.add_argument("--mask", help="silhouette image, 8-bit, foreground > 127 (replaces any alpha)")
    add_common(p)

    p = sub.add_parser("eval-set", help="score a trained single-view network on a dataset split (IoU, F-score)",
                       epilog=EPILOG_EVAL_SET, formatter_class=formatter)
    p.add_argument("run", metavar="RUN", help="run folder or its checkpoint.pt (zerolevel train)")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (zerolevel dataset)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score (default: test)")
    p.add_argument("--views", default="all", metavar="all|N",
                   help="views per object: all (the protocol, default) or N evenly spaced from view 0; for a "
                        "head network (phorhum): all heads or the first N, each from its first photograph")
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
    p.add_argument("--level", choices=["coarse", "fine"],
                   help="sdfnet: the lattice the meshes come from (default: fine, the refined one)")
    add_common(p)


def _torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, processes on this machine) from torchrun's environment (0, 1, 1 without it)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return int(env.get("RANK", "0")), world, int(env.get("LOCAL_WORLD_SIZE", str(world)))


def cmd_train(args: argparse.Namespace) -> None:
    from ..optim.loop import CHECKPOINT, load_checkpoint
    from ..settings import parse_assignments, run_settings

    parts = methods.get(args.method, "train").parts()
    overrides = parse_assignments(args.set)
    for name in ("iters", "epochs", "budget", "batch_size", "lr"):
        if getattr(args, name) is not None:
            check_positive(args, name)
    run = Path(args.output)
    has_checkpoint = (run / CHECKPOINT).is_file()
    if has_checkpoint and not args.resume:
        raise InputError("holds a trained network already: add --resume to continue it, or choose another "
                         "folder", run)
    saved = load_checkpoint(run)["state"].get("config") if has_checkpoint else None
    if saved is not None and args.iters is not None:
        saved = {**saved, "epochs": None}  # --iters replaces a resumed run's epochs
    given = {"encoder": args.encoder, "iterations": args.iters, "epochs": args.epochs, "budget_s": args.budget,
             "batch_size": args.batch_size, "lr": args.lr, "cross_render": args.cross_render, "seed": args.seed,
             "normals_from": args.normals_from, "encoder_from": args.encoder_from}
    known = {f.name for f in dataclasses.fields(parts.config)}
    foreign = [name for name, value in given.items() if value is not None and name not in known]
    if foreign:
        options = {"cross_render": "--cross-render", "encoder": "--encoder", "normals_from": "--normals-from",
                   "encoder_from": "--encoder-from"}
        raise InputError(f"{', '.join(options.get(n, n) for n in foreign)} does not apply to {args.method}")
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
    from ..atomic import atomic_path
    from ..learn.predict import SDF_NETWORKS, default_fusion, load_run
    from ..learn.refine import ring_cameras
    from ..learn.sampling import needs_cameras

    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise InputError(f"unknown mesh format {suffix!r}: use one of {', '.join('.' + f for f in MESH_FORMATS)}",
                         args.output)
    _check_predict_options(args)
    parts = methods.get(load_run(args.run)["name"], "train").parts()
    net = parts.load_model(args.run, args.device)
    size = net.config.image_size
    masks = args.mask or [None] * len(args.images)
    premultiply = getattr(net, "premultiplied_input", True)  # the head network sees photographs as they are
    images = [_network_input(image, mask, size, premultiply) for image, mask in zip(args.images, masks)]
    if args.fuse == "max" and not isinstance(net, SDF_NETWORKS):
        raise InputError("--fuse max takes the intersection of predicted solids (SDF values): a tetnet or sdfnet run's; "
                         "SoftRas's meshes are averaged (--fuse mean)", args.run)
    args.fuse = args.fuse or default_fusion(net)
    cameras = None if args.views is None else ring_cameras(args.dataset, args.views, size)  # checks the indices
    if args.refine is None:  # a network that needs the cameras (and lacks them) says so, naming the image
        seen_from = {"cameras": cameras} if needs_cameras(net) else {}
        mesh = parts.predict(net, images if len(images) > 1 else images[0],
                             source=args.images if len(images) > 1 else args.images[0], fusion=args.fuse, **seen_from)
        done = f"predicted from {_count(len(images), 'image')}" + (f", fused ({args.fuse})" if len(images) > 1 else "")
    else:
        mesh, done = _refine(args, net, images, cameras)
    with atomic_path(args.output) as tmp:
        mesh.export(tmp, file_type=suffix)
    print(f"wrote {args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, in the dataset's "
          f"normalised frame (centred, bounding-box diagonal ~1, y up); {done}")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check_predict_options(args: argparse.Namespace) -> None:
    """predict's option combinations, before any file is read."""
    count = len(args.images)
    for name, values in (("--mask", args.mask), ("--views", args.views), ("--normals", args.normals)):
        if values is not None and len(values) != count:
            raise InputError(f"{name} gives {_count(len(values), 'value')} for {_count(count, 'image')}: one per image")
    if args.views is not None and args.dataset is None:
        raise InputError("--views are indices on a dataset's ring of cameras: give --dataset DATA")
    if args.refine is not None:
        if not args.refine > 0:
            raise InputError(f"--refine must be a positive number of seconds, got {args.refine}")
        if args.dataset is None or args.views is None:
            raise InputError("--refine fits the images from their cameras: give --dataset DATA and --views K "
                             "(each image's view index on the dataset's ring)")
    elif args.normals is not None:
        raise InputError("--normals are used by --refine only: add --refine S")


def _refine(args: argparse.Namespace, net, images: list, cameras) -> tuple:
    """--refine: the fused prediction, then the tet-grid fit of the images for --refine seconds:
    (the mesh, what was done in words)."""
    from ..images import read_normal_map
    from ..learn.predict import fuse, network_outputs, output_mesh
    from ..learn.refine import DEFAULT_RADIUS, input_scene, refine
    from ..scene import validate_normals

    normals = None
    if args.normals:
        normals = []
        for path, image in zip(args.normals, images):
            normal = read_normal_map(path)
            if normal.shape[:2] != image.shape[:2]:
                raise InputError(f"the normal map is {normal.shape[1]}x{normal.shape[0]}, its image "
                                 f"{image.shape[1]}x{image.shape[0]}", path)
            normals.append(validate_normals(normal, image[..., 3] > 127, path))
    output = fuse(network_outputs(net, images, args.images, cameras), args.fuse)
    if len(output_mesh(net, output).faces) == 0:
        raise InputError("the network sees no object in these images (its surface is empty)", args.images[0])
    radius = float(getattr(net.config, "bounds", DEFAULT_RADIUS))  # an SDF network's box, else SoftRas's frame
    scene = input_scene(images, cameras, normals, radius)
    refined = refine(net, output, scene, args.refine, device=args.device, seed=args.seed, progress=not args.quiet,
                     source=args.images[0])
    r = refined.result
    done = (f"predicted from {_count(len(images), 'image')}, refined by the tet-grid fit to their "
            f"{' and '.join(m + 's' for m in refined.modalities)} (views {' '.join(map(str, args.views))}) for "
            f"{r.iterations} iterations in {r.seconds:.1f} s")
    return refined.mesh, done


def _network_input(image: str, mask: str | None, size: int, premultiply: bool = True) -> np.ndarray:
    """(size, size, 4) uint8 RGBA, RGB premultiplied by alpha as the ring datasets' (or as it is, over its
    background, as the head dataset's photographs), from an image file (and a mask); InputError for
    another size or a silhouette that is empty or covers the whole image."""
    from ..images import read_rgba

    rgba = read_rgba(image, mask)
    height, width = rgba.shape[:2]
    if (height, width) != (size, size):
        raise InputError(f"the network takes {size}x{size} images (its training set's size), this one is "
                         f"{width}x{height}: crop it to a square around the object and resize it to {size}x{size}",
                         image)
    silhouette = mask or image
    foreground = rgba[..., 3] > 127
    if not foreground.any():
        raise InputError("no foreground: the silhouette (alpha, or mask > 127) is empty", silhouette)
    if foreground.all():
        raise InputError("the silhouette covers the whole image: the object must have background around it",
                         silhouette)
    if premultiply:
        rgba[..., :3] = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    return rgba


def cmd_predict_normals(args: argparse.Namespace) -> None:
    from ..atomic import check_output_file
    from ..learn.normals_predict import NORMAL_FORMATS, predict_normal_map, write_normal_map
    from ..learn.pix2pix import NormalsNet
    from ..learn.predict import load_model

    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in NORMAL_FORMATS:
        raise InputError(f"unknown normal map format {suffix!r}: use .png or .npy", args.output)
    check_output_file(args.output)
    net = load_model(args.run, args.device, network=NormalsNet)
    rgba = _network_input(args.image, args.mask, net.config.image_size)
    normals = predict_normal_map(net, rgba, source=args.image)
    write_normal_map(args.output, normals)
    print(f"wrote {args.output}: {rgba.shape[1]}x{rgba.shape[0]} {net.config.space}-space normals, "
          f"{int(np.any(normals != 0, axis=-1).sum())} foreground pixels")


def cmd_eval_set(args: argparse.Namespace) -> None:
    from ..atomic import check_output_file, write_json
    from ..learn.evaluate import EvalRequest
    from ..learn.predict import load_run

    views = None
    if args.views != "all":
        try:
            views = int(args.views)
        except ValueError:
            views = 0
        if views <= 0:
            raise InputError(f"--views must be all or a positive number, got {args.views!r}")
    check_positive(args, "points", "batch_size", "gallery_objects")
    if args.surface_views < 0:
        raise InputError(f"--surface-views must be 0 or more, got {args.surface_views}")
    if any(t <= 0 for t in args.tau):
        raise InputError("--tau values must be positive")
    for output in (args.json, args.gallery):
        if output:
            check_output_file(output)  # before the evaluation, not after it
    parts = methods.get(load_run(args.run)["name"], "train").parts()
    request = EvalRequest(split=args.split, views=views, surface_views=args.surface_views, taus=tuple(args.tau),
                          points=args.points, batch_size=args.batch_size, device=args.device, seed=args.seed,
                          progress=not args.quiet, gallery=args.gallery, gallery_objects=args.gallery_objects,
                          level=args.level)
    result, table = parts.evaluate(args.run, args.dataset, request)
    print(table)
    if args.json:
        write_json(args.json, result)


def add_parsers(sub: argparse._SubParsersAction, formatter: type) -> None:
    """The single-view learning verbs' parsers."""
    _add_dataset_parser(sub, formatter)
    _add_learn_parsers(sub, formatter)


VERBS = {"dataset": cmd_dataset, "train": cmd_train, "predict": cmd_predict, "predict-normals": cmd_predict_normals,
         "eval-set": cmd_eval_set}
