"""Training the single-view network: the loss goes down, checkpoints round-trip, resuming is exact, two
gloo processes give the single-process weights, prediction and its input errors."""

import json
import os
import socket
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import run_state as load_checkpoint
import torch
import torch.multiprocessing as mp

from zerolevel.cameras import Cameras
from zerolevel.errors import InputError
from zerolevel.learn.softras_net import SoftRasNet
from zerolevel.cli import main
from zerolevel.learn.evaluate import voxel_iou
from zerolevel.learn.predict import load_model, predict
from zerolevel.learn.sampling import PairSampler, split_cameras, split_images
from zerolevel.learn.train import TrainConfig, batch_losses, train
from zerolevel.optim.loop import read_log
from zerolevel.geometry.occupancy import grid_centres

SIZE = 32  # image size of the tiny sets


@dataclass
class FakeSplit:
    """What `train` needs of a dataset split (zerolevel.learn.dataset.folder.DatasetSplit's attributes)."""

    images: np.ndarray   # (N, V, S, S, 4) uint8
    voxels: np.ndarray   # (N, n, n, n) bool
    ids: list
    categories: list
    cameras: Cameras

    def __len__(self) -> int:
        return len(self.ids)


def ellipsoids(n: int = 4, views: int = 24, size: int = SIZE, resolution: int = 32, seed: int = 0) -> FakeSplit:
    """n random axis-aligned ellipsoids near the origin, their exact ring silhouettes and voxels."""
    rng = np.random.default_rng(seed)
    radii, centres = rng.uniform(0.12, 0.4, (n, 3)), rng.uniform(-0.08, 0.08, (n, 3))
    cameras = Cameras.ring(views, width=size, height=size)
    origins, directions = (t.double().numpy() for t in cameras.image_rays())
    grid = np.stack(np.meshgrid(*grid_centres(np.array([[-0.5] * 3, [0.5] * 3]), resolution), indexing="ij"), -1)
    images = np.zeros((n, views, size, size, 4), np.uint8)
    voxels = np.zeros((n,) + (resolution,) * 3, bool)
    for i in range(n):
        o, d = (origins - centres[i]) / radii[i], directions / radii[i]
        a, b, c = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - 1
        hit = b * b >= 4 * a * c
        images[i, ..., :3] = np.where(hit[..., None], 180, 0)
        images[i, ..., 3] = np.where(hit, 255, 0)
        voxels[i] = (((grid - centres[i]) / radii[i]) ** 2).sum(-1) <= 1
    categories = ["round", "flat"] * (n // 2) + ["round"] * (n % 2)
    return FakeSplit(images, voxels, [f"e{i}" for i in range(n)], categories, cameras)


def config(**overrides) -> TrainConfig:
    settings = dict(batch_size=4, iterations=4, log_every=1, checkpoint_every=2, val_split=None)
    return TrainConfig(**{**settings, **overrides})


def run(split, path, cfg, **kwargs):
    return train(split, path, cfg, "cpu", progress=False, threads=1, **kwargs)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- training
def test_training_lowers_the_loss(tmp_path):
    split = ellipsoids()
    cfg = config(iterations=12, lr=1e-3)
    objects = np.repeat(np.arange(4), 4)  # a fixed batch: every object from four views
    view_a = np.tile([0, 6, 12, 18], 4)
    view_b = (view_a + 9) % 24

    def fixed_loss(net):
        net.train()  # BatchNorm on the batch, as in training
        with torch.no_grad():
            images = [split_images(split, objects, views, "cpu") for views in (view_a, view_b)]
            cameras = [split_cameras(split, views, "cpu") for views in (view_a, view_b)]
            return float(batch_losses(net, net, *images, *cameras, cfg)["loss"])

    torch.manual_seed(cfg.seed)  # train's initial network
    before = fixed_loss(SoftRasNet(image_size=SIZE))
    result = run(split, tmp_path, cfg)
    assert result.iterations == 12 and result.stopped == "iterations"
    assert fixed_loss(load_model(tmp_path)) < before - 0.005


def test_run_folder_log_plot_and_validation(tmp_path):
    split, val = ellipsoids(), ellipsoids(n=2, seed=1)
    result = run(split, tmp_path, config(iterations=3, val_split="val", eval_every=2, val_views=2), val=val)
    log = read_log(tmp_path / "log.jsonl")
    assert [row["iter"] for row in log if "loss" in row] == [1, 2, 3]
    ious = [row["val_iou"] for row in log if "val_iou" in row]
    assert len(ious) == 2 and all(0 < v <= 1 for v in ious)  # at iterations 2 and 3 (the end)
    assert result.val_iou == ious[-1] and result.best_val_iou == max(ious)
    assert {"iter", "loss", "silhouette", "laplacian", "flatten", "lr"} <= set(log[0])
    svg = (tmp_path / "training.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3  # loss, silhouette, val_iou
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 3 and "3 iterations" in summary["summary"]


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    split = ellipsoids()
    run(split, tmp_path, config(iterations=2))
    payload = load_checkpoint(tmp_path)
    assert payload["iteration"] == 2 and payload["net"]["image_size"] == SIZE
    images = split_images(split, np.arange(4), np.arange(4), "cpu")
    with torch.no_grad():
        first = load_model(tmp_path)(images)
        run(split, tmp_path, config(iterations=2), resume=True)  # restores, trains 0 steps, saves again
        second = load_model(tmp_path / "checkpoint.pt")(images)
    assert torch.equal(first, second)
    assert states_equal(payload["model"], load_checkpoint(tmp_path)["model"])
    mesh = predict(tmp_path, split.images[1, 1])
    assert np.allclose(mesh.vertices, first[1].numpy(), atol=1e-6)  # a batch of 1: other BLAS paths
    assert mesh.is_watertight and len(mesh.vertices) == 642 and len(mesh.faces) == 1280


def test_resume_matches_an_uninterrupted_run(tmp_path):
    split = ellipsoids()
    whole = run(split, tmp_path / "whole", config(iterations=4))
    run(split, tmp_path / "parts", config(iterations=2))
    resumed = run(split, tmp_path / "parts", config(iterations=4), resume=True)
    assert resumed.resumed_from == 2 and resumed.iterations == 4
    assert states_equal(load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(tmp_path / "parts")["model"])
    assert read_log(tmp_path / "whole" / "log.jsonl") != [] and \
        [r["loss"] for r in read_log(tmp_path / "whole" / "log.jsonl")] == \
        [r["loss"] for r in read_log(tmp_path / "parts" / "log.jsonl")]
    assert resumed.losses["loss"] == whole.losses["loss"]
    with pytest.raises(InputError, match="encoder"):
        run(split, tmp_path / "parts", config(iterations=6, encoder="resnet"), resume=True)


def test_budget_stops_and_epochs_count(tmp_path):
    split = ellipsoids()
    result = run(split, tmp_path / "b", config(iterations=100, budget_s=0.0))
    assert result.stopped == "budget" and result.iterations == 1
    assert run(split, tmp_path / "e", config(epochs=2.0)).iterations == 2  # 4 objects, batch 4


def test_budget_triggered_decay_starts_once_and_survives_resume(tmp_path):
    split = ellipsoids()
    lrs = lambda folder: [r["lr"] for r in read_log(folder / "log.jsonl") if "lr" in r]  # noqa: E731
    # at fraction 0 of an ample budget the decay starts after the first step: steps 2.. are decayed
    run(split, tmp_path / "now", config(iterations=3, lr=1e-3, budget_s=3600.0, decay_at_budget=0.0))
    assert lrs(tmp_path / "now") == pytest.approx([1e-3, 3e-4, 3e-4])
    assert load_checkpoint(tmp_path / "now")["decay_from"] == 1
    # at fraction 1 it never starts within the budget; without one, decay_at rules alone
    run(split, tmp_path / "never", config(iterations=3, lr=1e-3, budget_s=3600.0, decay_at_budget=1.0))
    assert lrs(tmp_path / "never") == pytest.approx([1e-3] * 3)
    # a resumed run keeps the iteration it started at, whatever its own clock says
    run(split, tmp_path / "parts", config(iterations=2, lr=1e-3, budget_s=3600.0, decay_at_budget=0.0))
    run(split, tmp_path / "parts", config(iterations=3, lr=1e-3, budget_s=3600.0, decay_at_budget=0.0), resume=True)
    assert lrs(tmp_path / "parts") == lrs(tmp_path / "now")
    assert states_equal(load_checkpoint(tmp_path / "now")["model"], load_checkpoint(tmp_path / "parts")["model"])
    with pytest.raises(ValueError, match="fraction"):
        config(decay_at_budget=1.5)


def test_pair_sampler_is_class_balanced_and_restorable():
    categories = np.array(["a"] * 9 + ["b"])
    sampler = PairSampler(categories, 24, seed=3)
    objects, view_a, view_b = sampler.sample(4000)
    assert (view_a != view_b).all() and view_b.min() >= 0 and view_b.max() < 24
    assert abs(np.mean(objects == 9) - 0.5) < 0.05  # one category of one object: half the samples
    state = sampler.state_dict()
    first = sampler.sample(8)
    sampler.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(first, sampler.sample(8)))


# ---------------------------------------------------------------------------------------- distributed
def _ddp_worker(rank: int, world: int, port: int, run_dir: str, cfg: TrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    train(ellipsoids(), run_dir, cfg, "cpu", progress=False, threads=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    """2 gloo processes x 2 samples == 1 process x 4 samples (global BatchNorm, averaged gradients).
    float64, so that Adam's normalised steps on near-zero gradients are not decided by float32 rounding."""
    cfg = config(iterations=2, checkpoint_every=100, dtype="float64")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), cfg), nprocs=2)
    run(ellipsoids(), tmp_path / "one", cfg)
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert ddp["iteration"] == one["iteration"] == 2
    for key, value in one["model"].items():
        assert torch.allclose(ddp["model"][key], value, rtol=0, atol=1e-10), key
    assert [r["loss"] for r in read_log(tmp_path / "ddp" / "log.jsonl")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "one" / "log.jsonl")], rel=1e-12)


# ---------------------------------------------------------------------------------------- prediction
def test_predict_rejects_bad_images(tmp_path):
    split = ellipsoids(n=2)
    run(split, tmp_path, config(iterations=1, batch_size=2))
    net = load_model(tmp_path)
    with pytest.raises(InputError, match="32x32 RGBA uint8"):
        predict(net, np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(InputError, match="32x32 RGBA uint8"):
        predict(net, split.images[0, 0, ..., :3])
    with pytest.raises(InputError, match="32x32 RGBA uint8"):
        predict(net, split.images[0, 0].astype(np.float32))
    with pytest.raises(InputError, match="no foreground"):
        predict(net, np.zeros((32, 32, 4), np.uint8), source="empty.png")
    with pytest.raises(InputError, match="no such checkpoint"):
        predict(tmp_path / "nothing", split.images[0, 0])


def test_voxel_iou_of_a_sphere():
    split = ellipsoids(n=1)
    import trimesh
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    grid = np.stack(np.meshgrid(*grid_centres(np.array([[-0.5] * 3, [0.5] * 3]), 32), indexing="ij"), -1)
    nearest = np.clip(np.abs(grid) - 0.5 / 32, 0.0, None)  # each cell's point nearest the centre
    ball = np.linalg.norm(nearest, axis=-1) <= 0.3  # the cells the ball reaches into
    assert voxel_iou(sphere.vertices, sphere.faces, ball) > 0.95
    assert voxel_iou(sphere.vertices, sphere.faces, ~ball) == 0.0
    assert 0 < voxel_iou(sphere.vertices, sphere.faces, split.voxels[0]) < 1


def test_trains_from_a_dataset_folder(tmp_path):
    """The dataset folder format of `zerolevel dataset`, read by zerolevel.learn.dataset."""
    pytest.importorskip("zerolevel.learn.dataset")
    root = tmp_path / "data"
    splits = {"train": ellipsoids(n=2), "val": ellipsoids(n=1, seed=1)}
    for name, split in splits.items():
        (root / name).mkdir(parents=True)
        np.save(root / name / "images.npy", split.images)
        np.save(root / name / "voxels.npy", split.voxels)
        (root / name / "objects.json").write_text(json.dumps(
            [{"id": i, "category": c} for i, c in zip(split.ids, split.categories)]))
    (root / "dataset.json").write_text(json.dumps({
        "format": "zerolevel-dataset", "version": 1, "views": 24, "resolution": SIZE, "elevation": 30,
        "distance": 2.732, "fov": 30, "voxels": 32, "categories": ["round", "flat"],
        "splits": {name: len(split) for name, split in splits.items()}}))
    result = train(root, tmp_path / "run", config(iterations=1, batch_size=2, val_split="val", val_views=1),
                   "cpu", progress=False, threads=1)
    assert result.iterations == 1 and result.val_iou is not None
    assert main(["train", "softras", str(root), "-o", str(tmp_path / "cli"), "--iters", "1", "--batch-size", "2",
                 "--threads", "1", "--encoder", "attention", "--no-cross-render", "-q"]) == 0  # torchrun's too
    assert load_checkpoint(tmp_path / "cli")["config"]["cross_render"] is False
