"""The registry: every multi-view method and every single-view network, by name. The only place a
method's name is spelled out.

An entry says what the method is (one line for `--help` and the report), how long it runs by default,
and where its parts live: a fit's method class, settings dataclass and checkpoint-to-mesh function;
a network's training, settings, loader and predictor. The parts are imported on first use, so the
command line starts without loading every renderer. Adding a method is one entry here plus its module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class FitParts:
    """What a multi-view fit is made of."""

    method: type                      # (scene, iters, config=, device=, seed=, source=) -> optim.loop.Task
    config: type                      # its settings dataclass (`fit --set KEY=VALUE`)
    mesh_from_state: Callable[..., Any]  # (state, resolution, device, progress) -> trimesh in input units


@dataclass(frozen=True)
class TrainParts:
    """What a single-view network's training is made of."""

    train: Callable[..., Any]         # (dataset, run_dir, config, device, resume=, progress=, threads=) -> result
    config: type                      # its settings dataclass (`train --set KEY=VALUE`)
    load_model: Callable[..., Any]    # (run or checkpoint, device) -> the trained network, eval mode
    predict: Callable[..., Any]       # (network, (S, S, 4) uint8 image or a list of them, source, fusion=) -> trimesh
    evaluate: Callable[..., Any]      # (run, dataset, learn.evaluate.EvalRequest) -> (JSON-ready result, table)


@dataclass(frozen=True)
class Entry:
    """One method or network of the registry."""

    name: str
    kind: str                         # "fit" (multi-view optimisation) or "train" (single-view network)
    summary: str                      # one line: what it is
    default_iters: int                # iterations when none are asked for
    parts: Callable[[], Any]          # -> FitParts | TrainParts, imported on first use


def _supernormal() -> FitParts:
    from .recon.supernormal import SuperNormal, SuperNormalConfig, mesh_from_state
    return FitParts(SuperNormal, SuperNormalConfig, mesh_from_state)


def _sdfdiff() -> FitParts:
    from .recon.sdfdiff import SDFDiff, SDFDiffConfig, mesh_from_state
    return FitParts(SDFDiff, SDFDiffConfig, mesh_from_state)


def _dense() -> FitParts:
    from .recon.dense import DenseFit, DenseFitConfig, mesh_from_state
    return FitParts(DenseFit, DenseFitConfig, mesh_from_state)


def _tetsdf() -> FitParts:
    from .recon.tetsdf import TetSDF, TetSDFConfig, mesh_from_state
    return FitParts(TetSDF, TetSDFConfig, mesh_from_state)


def _softras() -> TrainParts:
    from .learn.evaluate import eval_set
    from .learn.predict import load_model, predict
    from .learn.softras_net import SoftRasNet
    from .learn.train import TrainConfig, train
    return TrainParts(train, TrainConfig, partial(load_model, network=SoftRasNet), predict, eval_set)


def _tetnet() -> TrainParts:
    from .learn.evaluate import eval_set
    from .learn.predict import load_model, predict
    from .learn.tetnet import TetNet
    from .learn.tetnet_train import TetNetTrainConfig, train
    return TrainParts(train, TetNetTrainConfig, partial(load_model, network=TetNet), predict, eval_set)


def _sdfnet() -> TrainParts:
    from .learn.evaluate import eval_set
    from .learn.predict import load_model, predict
    from .learn.sdfnet import SDFNet
    from .learn.sdfnet_train import SDFNetTrainConfig, train
    return TrainParts(train, SDFNetTrainConfig, partial(load_model, network=SDFNet), predict, eval_set)


def _normals() -> TrainParts:
    from .learn.normals_eval import eval_set
    from .learn.normals_predict import predict_no_mesh
    from .learn.pix2pix import NormalsNet
    from .learn.pix2pix_train import NormalsTrainConfig, train
    from .learn.predict import load_model
    return TrainParts(train, NormalsTrainConfig, partial(load_model, network=NormalsNet), predict_no_mesh,
                      eval_set)


def _phorhum() -> TrainParts:
    from .learn.phorhum import PhorhumNet
    from .learn.phorhum_eval import eval_set
    from .learn.phorhum_predict import predict_head
    from .learn.phorhum_train import PhorhumTrainConfig, train
    from .learn.predict import load_model
    return TrainParts(train, PhorhumTrainConfig, partial(load_model, network=PhorhumNet), predict_head, eval_set)


# Default iterations: where the benchmarks of record (benchmarks/results/multiview*.md) reach their
# goals; the tet-grid fit's steps are ~3x dearer at its finest level, so it takes fewer.
REGISTRY: dict[str, Entry] = {entry.name: entry for entry in [
    Entry("dense", "fit", "the fast default: a dense SDF lattice started from the masks' visual hull and kept "
          "within it, sphere-traced normals and silhouettes, coarse to fine by elapsed time (SDFDiff's machinery); "
          "normals and/or masks", 1000, _dense),
    Entry("supernormal", "fit", "hash-grid SDF, NeuS patch volume rendering, directional finite differences "
          "(SuperNormal); normals and/or masks", 1000, _supernormal),
    Entry("sdfdiff", "fit", "dense SDF lattice, differentiable sphere tracing, coarse to fine (SDFDiff); "
          "normals, masks and/or shaded images", 1000, _sdfdiff),
    Entry("tetsdf", "fit", "SDF on a tetrahedral grid, marching tetrahedra, rasterised normal maps, "
          "silhouette shrink/expand (Wu et al.); normals and/or masks", 600, _tetsdf),
    Entry("softras", "train", "Soft Rasterizer's deformed-sphere mesh network, trained on silhouettes",
          250_000, _softras),
    Entry("tetnet", "train", "image to SDF values on a tet grid, marching tetrahedra, trained on normal maps and "
          "masks (Wu et al.)", 50_000, _tetnet),
    Entry("sdfnet", "train", "image to a coarse SDF lattice refined to a finer one, sphere-traced, trained on "
          "shaded images and silhouettes (SDFDiff)", 50_000, _sdfnet),
    Entry("normals", "train", "pix2pix: RGBA image to normal map, U-Net and PatchGAN, L1 + GAN (the "
          "normal maps Wu et al. train tetnet on; zerolevel predict-normals)", 20_000, _normals),
    Entry("phorhum", "train", "PHORHUM for heads: a photograph to a pixel-aligned SDF + albedo and a shading "
          "network, trained on a head dataset's 3D samples and photographs (zerolevel dataset --generate heads)",
          20_000, _phorhum),
]}

DEFAULT_FIT = "dense"  # what wins benchmarks/results/fit_speed.md


def names(kind: str) -> list[str]:
    """The registered names of one kind ("fit" or "train"), in registry order."""
    return [name for name, entry in REGISTRY.items() if entry.kind == kind]


def get(name: str, kind: str) -> Entry:
    """The entry of `name`; InputError listing the choices when there is none of that kind."""
    entry = REGISTRY.get(name)
    if entry is None or entry.kind != kind:
        what = "method" if kind == "fit" else "network"
        raise InputError(f"unknown {what} {name!r}; choose one of {', '.join(names(kind))}")
    return entry


def help_text(kind: str) -> str:
    """'name: summary; ...' for the command line's help."""
    return "; ".join(f"{name}: {REGISTRY[name].summary}" for name in names(kind))
