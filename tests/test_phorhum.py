"""PHORHUM's head network: its parts against definitions, its losses, and its training through the
shared loop (learning, exact resume, two processes = one), prediction and bad input."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import trimesh
from conftest import assert_one_line_error
from conftest import run_state as load_checkpoint

from zerolevel import losses as L
from zerolevel.cameras import Cameras
from zerolevel.cli import main
from zerolevel.learn.dataset.heads import HeadDatasetSettings, load_head_split, write_head_dataset
from zerolevel.learn.phorhum import BlurPool, PhorhumNet, positional_encoding
from zerolevel.learn.phorhum_train import PhorhumTrainConfig, train
from zerolevel.optim.loop import read_log

SMALL_NET = dict(channels=(8, 16, 16, 32), features=16, frequencies=2, width=32, depth=4, light_code=4)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("phorhum") / "heads"
    write_head_dataset(root, 6, HeadDatasetSettings(views=2, resolution=32, supersample=1, surface_samples=400,
                                                    near_samples=400, far_samples=100),
                       fractions=(0.5, 0.25, 0.25), seed=0, progress=False)
    return root


def config(**overrides) -> PhorhumTrainConfig:
    settings = dict(SMALL_NET, batch_size=2, surface_points=64, label_points=128, iterations=4, eval_every=1000,
                    val_objects=2, checkpoint_every=1000, log_every=1, w_g1_ramp=10)
    return PhorhumTrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("base", ["sphere", "mean_head"])
def test_untrained_network_is_its_prior_and_its_gradient_is_the_derivative(base):
    torch.manual_seed(0)
    net = PhorhumNet(image_size=32, base=base, **SMALL_NET).double()
    images = torch.rand(2, 4, 32, 32, dtype=torch.float64)
    cameras = Cameras.look_at(torch.tensor([[0.0, 0.0, -2.0], [1.5, 0.3, -1.2]]), fov_deg=30, width=32,
                              height=32).to(dtype=torch.float64)
    points = torch.rand(2, 5, 3, dtype=torch.float64) - 0.5
    features, _ = net.encode(images)
    d, albedo = net.query(features, cameras, points)
    prior = points.norm(dim=-1) - 0.3 if base == "sphere" else net.base(points)
    torch.testing.assert_close(d, prior)  # the zero-initialised head
    torch.testing.assert_close(albedo, torch.full_like(albedo, 0.5))
    with torch.no_grad():  # a trained-like head: the MLP now adds to the prior
        net.head.weight.normal_(0, 0.3)
    _, _, gradient = net.sdf_with_normals(features, cameras, points, create_graph=False)
    h = 1e-6
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = h
        plus, _ = net.query(features, cameras, points + step)
        minus, _ = net.query(features, cameras, points - step)
        torch.testing.assert_close(gradient[..., axis], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-7)


def test_mean_head_prior_is_the_mean_heads_signed_distance():
    """The default prior: ~0 on the mean head's surface, negative exactly inside it, the distance to
    the truth's surface samples within a fraction of its lattice's cell, and outside the lattice's box
    at least the distance to the box; its gradient has a second derivative (the eikonal term's)."""
    from scipy.spatial import cKDTree

    from zerolevel.learn.heads import mean_head, mean_head_sdf

    net = PhorhumNet(image_size=32, **SMALL_NET)
    assert net.config.base == "mean_head"
    head, lattice = mean_head(), mean_head_sdf()
    surface = head.outer_mesh()
    cell = float(np.max((lattice.hi - lattice.lo) / (len(lattice.values) - 1)))
    samples = trimesh.sample.sample_surface(surface, 50_000, seed=1)[0]
    on_surface = net.base(torch.from_numpy(samples).float()).abs()
    # trilinear on the lattice rounds what is thinner than a cell (an ear's rim) by up to about half of one
    assert on_surface.median() < 0.05 * cell and on_surface.quantile(0.9) < 0.15 * cell
    assert on_surface.max() < 0.75 * cell
    rng = np.random.default_rng(0)
    points = rng.uniform(lattice.lo, lattice.hi, size=(4000, 3))
    base = net.base(torch.from_numpy(points).float()).numpy()
    distance = cKDTree(trimesh.sample.sample_surface(surface, 100_000, seed=0)[0]).query(points)[0]
    inside = head.contains(points)
    clear = distance > cell  # the sign is exact away from the surface (trilinear blends across it)
    assert np.array_equal(base[clear] < 0, inside[clear])
    assert np.abs(np.abs(base) - distance).mean() < 0.1 * cell
    far = torch.tensor([[0.0, 0.0, 3.0], [2.0, -2.0, 0.0]])
    box = np.linalg.norm(far.numpy() - np.clip(far.numpy(), lattice.lo, lattice.hi), axis=1)
    assert (net.base(far).numpy() >= box - 1e-5).all()
    near = torch.from_numpy(surface.vertices[::50]).float().requires_grad_(True)
    scale = torch.ones(1, requires_grad=True)  # a parameter of the distance, as the MLP's are
    gradient, = torch.autograd.grad((scale * net.base(near)).sum(), near, create_graph=True)
    assert 0.8 < float(gradient.detach().norm(dim=-1).median()) < 1.2
    ((gradient.norm(dim=-1) - 1) ** 2).mean().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all() and scale.grad.abs() > 0


def test_positional_encoding_and_blur_pool():
    q = torch.tensor([[0.25, -0.5, 0.1]])
    code = positional_encoding(q, 2)
    assert code.shape == (1, 3 + 12)
    torch.testing.assert_close(code[0, 3:6], torch.sin(torch.pi * q[0]))
    torch.testing.assert_close(code[0, 9:12], torch.cos(torch.pi * q[0]))  # sin of 2 octaves, then cos
    pool = BlurPool(3)
    flat = torch.full((1, 3, 8, 8), 0.7)
    torch.testing.assert_close(pool(flat), torch.full((1, 3, 4, 4), 0.7))
    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 1.0  # a one-pixel pattern aliases to 1 under plain subsampling; blurred, to 1/2
    torch.testing.assert_close(pool(stripes)[..., 1:-1, 1:-1], torch.full((1, 3, 2, 2), 0.5))


def test_head_losses_vanish_on_the_truth_and_push_the_right_way():
    points = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1) * 0.3
    distance = points.norm(dim=-1) - 0.3
    gradient = points / points.norm(dim=-1, keepdim=True)
    assert float(L.surface_sdf_loss(distance, 2.0 * gradient, gradient, 15.0, 1.0)) < 1e-6  # scale-free normals
    d = torch.tensor([0.05, -0.05], requires_grad=True)
    loss = L.inside_label_loss(d, torch.tensor([True, False]), 50.0)
    loss.backward()
    assert d.grad[0] > 0 and d.grad[1] < 0  # descent lowers the inside point's distance, raises the outside's


@pytest.mark.parametrize("base, fall, surface_rise, gain", [("sphere", 0.7, 1.0, 0.08), ("mean_head", 0.9, 1.05, 0.01)])
def test_training_learns_the_heads(heads, tmp_path, base, fall, surface_rise, gain):
    """On two training heads, 40 steps take the inside labels past the starting prior's: well past a
    sphere's, and past the mean head's, which already holds most of a head (its surface term, already
    low, stays about where it was while the residual MLP starts to move)."""
    train_split = load_head_split(heads, "train")
    settings = dict(val_split=None, base=base, w_g1_ramp=0)  # L_g's weight constant: its log comparable
    start = train(train_split, tmp_path / "zero", config(iterations=1, lr=1e-12, **settings), "cpu", progress=False)
    result = train(train_split, tmp_path / "run", config(iterations=40, lr=2e-3, **settings), "cpu", progress=False)
    log = [row for row in read_log(tmp_path / "run" / "log.jsonl") if "label" in row]
    from zerolevel.learn.phorhum_train import validate
    from zerolevel.learn.predict import load_model
    trained = validate(load_model(tmp_path / "run", network=PhorhumNet), train_split, None, torch.device("cpu"))
    prior = validate(load_model(tmp_path / "zero", network=PhorhumNet), train_split, None, torch.device("cpu"))
    assert np.mean([r["label"] for r in log[-5:]]) < fall * np.mean([r["label"] for r in log[:5]])
    assert np.mean([r["surface"] for r in log[-5:]]) < surface_rise * np.mean([r["surface"] for r in log[:5]])
    assert trained[0] > prior[0] + gain and trained[1] < prior[1]
    assert result.iterations == 40 and start.iterations == 1


def test_resume_continues_exactly(heads, tmp_path):
    settings = dict(checkpoint_every=2, dtype="float64")
    train(heads, tmp_path / "whole", config(iterations=4, **settings), "cpu", progress=False)
    train(heads, tmp_path / "part", config(iterations=2, **settings), "cpu", progress=False)
    train(heads, tmp_path / "part", config(iterations=4, **settings), "cpu", progress=False, resume=True)
    whole, part = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(tmp_path / "part")["model"]
    for name in whole:
        torch.testing.assert_close(part[name], whole[name], rtol=0, atol=0)


def _ddp_worker(rank: int, world: int, port: int, data: str, run_dir: str, cfg: PhorhumTrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    train(data, run_dir, cfg, "cpu", progress=False, threads=1)


def test_two_processes_match_one(heads, tmp_path):
    """torchrun's setting: 2 gloo processes x 1 head == 1 process x 2 heads (DDP averages the gradients,
    every loss is a mean over the process's heads; the second derivatives of L_g and L_e included)."""
    cfg = config(iterations=2, dtype="float64", val_split=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(heads), str(tmp_path / "ddp"), cfg), nprocs=2)
    train(heads, tmp_path / "one", cfg, "cpu", progress=False)
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    for key, value in one["model"].items():
        assert torch.allclose(ddp["model"][key], value, rtol=0, atol=1e-10), key


def test_command_line_trains_predicts_and_refuses_bad_input(heads, tmp_path, capsys):
    run = tmp_path / "run"
    settings = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in SMALL_NET.items()]
    net = [arg for setting in [*settings, "surface_points=64", "label_points=128", "val_objects=1"]
           for arg in ("--set", setting)]
    assert main(["train", "phorhum", str(heads), "-o", str(run), "--iters", "3", "--batch-size", "2", "-q",
                 "--threads", "1", *net]) == 0
    split = load_head_split(heads, "test")
    image = np.concatenate([split.images[0, 0], split.masks[0, 0][..., None]], axis=-1)
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.fromarray(image).save(photo)
    capsys.readouterr()
    assert main(["predict", str(run), str(photo), "-o", str(tmp_path / "head.ply")]) == 0
    mesh = trimesh.load(tmp_path / "head.ply")
    assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    from zerolevel.learn.phorhum_predict import predict_head
    from zerolevel.learn.predict import load_model
    direct = predict_head(load_model(run, network=PhorhumNet), image)  # the photograph as it is: not premultiplied
    assert len(direct.faces) == len(mesh.faces)
    capsys.readouterr()
    assert main(["eval-set", str(run), str(heads), "--views", "1", "--points", "4000", "--json",
                 str(tmp_path / "scores.json"), "--gallery", str(tmp_path / "gallery.png"), "--gallery-objects", "1"]) == 0
    table = capsys.readouterr().out
    assert "F@1.0% face" in table and "mean head" in table
    import json
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(scores["heads"]) == 1 and 0 <= scores["network"]["silhouette IoU"] <= 1
    assert Image.open(tmp_path / "gallery.png").size == (3 * 32, 32)
    ring = tmp_path / "ring"
    assert main(["dataset", "--generate", "vase", "--count", "3", "--views", "2", "--res", "32", "-o", str(ring),
                 "-q", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "phorhum", str(ring), "-o", str(tmp_path / "bad"), "--iters", "1", "-q"]) == 2
    assert_one_line_error(capsys.readouterr().err, "ring")
    assert not (tmp_path / "bad").exists()
    speck = np.zeros((32, 32, 4), np.uint8)
    speck[15:17, 15:17] = 255  # 0.4% of the image: not a head photograph
    Image.fromarray(speck).save(tmp_path / "speck.png")
    assert main(["predict", str(run), str(tmp_path / "speck.png"), "-o", str(tmp_path / "x.ply")]) == 2
    assert_one_line_error(capsys.readouterr().err, "face-sized")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(big)
    assert main(["predict", str(run), str(big), "-o", str(tmp_path / "x.ply")]) == 2
    assert_one_line_error(capsys.readouterr().err, "big.png")
    assert not (tmp_path / "x.ply").exists()


@pytest.fixture(scope="module")
def one_head(tmp_path_factory):
    root = tmp_path_factory.mktemp("phorhum") / "one"
    write_head_dataset(root, 1, HeadDatasetSettings(views=2, resolution=32, supersample=1, surface_samples=100,
                                                    near_samples=100, far_samples=10),
                       fractions=(1.0, 0.0, 0.0), seed=3, progress=False)
    return root


@pytest.mark.parametrize("term", ["silhouette", "render_albedo"])
def test_rendering_losses_alone_teach_the_network(one_head, tmp_path, term):
    """With every other weight 0, the sphere-traced terms of whole 32^2 photographs of one head still
    lower themselves: their gradients reach the network through the traced hits (implicit
    differentiation) and the soft mask."""
    weights = {"w_g1_start": 0.0, "w_g1_end": 0.0, "w_g2": 0.0, "w_l": 0.0, "w_e": 0.0, "w_a": 0.0, "w_s": 0.0,
               "w_c": 0.0, "w_r": 0.0, "w_m": 0.0}
    weights[{"silhouette": "w_m", "render_albedo": "w_c"}[term]] = 1.0
    train(one_head, tmp_path / "run", config(iterations=20, lr=2e-3, val_split=None, batch_size=1, render_heads=1,
                                             **weights), "cpu", progress=False)
    values = [row[term] for row in read_log(tmp_path / "run" / "log.jsonl") if term in row]
    assert np.mean(values[-5:]) < 0.8 * np.mean(values[:5])


def test_evaluation_scores_the_truth_perfectly_and_the_mean_head_less(heads):
    from scipy.spatial import cKDTree

    from zerolevel.learn.heads import generate_head
    from zerolevel.learn.phorhum_eval import (HeadPrediction, evaluate_heads, head_seeds, mean_figures,
                                              mean_head_predictions)

    test, train_split = load_head_split(heads, "test"), load_head_split(heads, "train")
    seeds = head_seeds(test)
    truths = [generate_head(seeds[test.ids[i]]) for i in range(len(test))]
    exact = [HeadPrediction(h.outer_mesh(), lambda p, h=h: h.albedo[cKDTree(h.vertices).query(p)[1]])
             for h in truths]
    indices = list(range(len(test)))
    perfect = mean_figures(evaluate_heads(exact, test, indices, samples=20_000))
    mean = mean_figures(evaluate_heads(mean_head_predictions(test, indices, train_split), test, indices,
                                       samples=20_000))
    assert perfect["F@1.0% face"] > 0.97 and perfect["F@1.0% head"] > 0.97
    assert perfect["normal consistency face"] > 0.95 and perfect["albedo PSNR face"] > 25
    assert perfect["silhouette IoU"] > 0.85  # the 32^2 mask is antialiased; the render is one ray a pixel
    assert mean["F@0.5% face"] < perfect["F@0.5% face"] - 0.1 and mean["albedo PSNR face"] < perfect["albedo PSNR face"]
