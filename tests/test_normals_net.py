"""pix2pix's normal-map network: its output, the angular-error metric and the mean-normal baseline against
hand-computed cases, training that beats the baseline, exact resume, predict-normals' files read back by
the scene reader, one-line CLI errors, eval-set's table, and TetNet trained on its predictions."""

import copy
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_state
from test_tetnet import ellipsoids  # the ring-rendered ellipsoid splits of the tet network's tests

from zerolevel.cameras import Cameras
from zerolevel.cli import main
from zerolevel.errors import InputError
from zerolevel.images import read_normal_map, write_png
from zerolevel.learn import tetnet_train
from zerolevel.learn.dataset.settings import DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources
from zerolevel.learn.dataset.views import normals_to_int8
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.learn.normals_eval import angular_errors, error_stats, mean_normal_maps, normal_errors
from zerolevel.learn.normals_predict import predict_normal_map, predict_split_normals, with_predicted_normals
from zerolevel.learn.pix2pix import NormalsNet, PatchDiscriminator, to_camera, to_world
from zerolevel.learn.pix2pix_train import NormalsTrainConfig, train
from zerolevel.learn.predict import load_model
from zerolevel.scene import validate_normals

SMALL = {"channels": (8, 16, 32, 32), "d_channels": (8, 16, 32)}  # for 32x32 images
FAST = ["-q", "--threads", "1"]
SET_SMALL = ["--set", "channels=8,16,32,32", "--set", "d_channels=8,16,32"]


def config(**changes) -> NormalsTrainConfig:
    settings = dict(batch_size=4, iterations=2, val_split=None, log_every=1, checkpoint_every=1000, **SMALL)
    return NormalsTrainConfig(**{**settings, **changes})


def run(split, out, cfg, **kwargs):
    return train(split, out, cfg, "cpu", progress=False, threads=1, **kwargs)


def lit(split):
    """The split's images shaded by three coloured world-fixed lights, rgb = 0.5 + 0.5 n . L_rgb: the
    world normal is in the image (a headlight's shading would leave the ring view to be guessed)."""
    lights = np.array([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [-0.6, 0.0, 0.8]])
    normals = split.normals.astype(np.float64) / 127
    alpha = split.images[..., 3:] / 255.0
    split.images[..., :3] = np.round(255 * alpha * (0.5 + 0.5 * normals @ lights.T)).clip(0, 255).astype(np.uint8)
    return split


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    radii = [tuple(r) for r in rng.uniform(0.15, 0.4, (8, 3))]
    return lit(ellipsoids(radii[:6], views=8)), lit(ellipsoids(radii[6:], views=8))


@pytest.fixture(scope="module")
def normals_run(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("normals") / "run"
    run(splits[0], out, config(iterations=1))
    return out


# ------------------------------------------------------------------------------------------------ networks
def test_output_is_unit_on_the_foreground_and_zero_elsewhere():
    torch.manual_seed(0)
    net = NormalsNet(image_size=32, channels=SMALL["channels"]).eval()
    images = torch.rand(3, 4, 32, 32)
    images[:, 3] = (images[:, 3] > 0.4).float()
    normals = net(images)
    assert normals.shape == (3, 3, 32, 32)
    length = normals.norm(dim=1)
    foreground = images[:, 3] > 0
    torch.testing.assert_close(length[foreground], torch.ones(int(foreground.sum())))
    assert (normals.permute(0, 2, 3, 1)[~foreground] == 0).all()
    assert PatchDiscriminator(SMALL["d_channels"])(torch.rand(3, 7, 32, 32)).shape == (3, 1, 6, 6)
    with pytest.raises(ValueError, match="divisible"):
        NormalsNet(image_size=32)  # 7 levels need 128 pixels


# ------------------------------------------------------------------------------------------------ metric
def test_angular_error_of_normals_turned_by_known_angles():
    angles = np.array([10.0, 20.0, 40.0, 90.0])
    turned = np.stack([np.zeros(4), np.sin(np.radians(angles)), np.cos(np.radians(angles))], -1)
    target = np.tile([0.0, 0.0, 1.0], (6, 1))
    target[4:] = 0  # background: not counted
    predicted = np.concatenate([turned, np.ones((2, 3))])
    predicted[3] = 0  # a foreground pixel predicted 0: 90 degrees
    errors = angular_errors(predicted, target)
    np.testing.assert_allclose(errors, angles, atol=1e-9)
    stats = error_stats(errors)
    assert stats["pixels"] == 4 and stats["mean"] == pytest.approx(40) and stats["median"] == pytest.approx(30)
    assert stats["within"] == {"11.25": 25.0, "22.5": 50.0, "30": 50.0}
    assert error_stats(np.zeros(0))["mean"] is None


def test_mean_normal_baseline_per_view_and_camera_facing_where_empty():
    cameras = Cameras.ring(2, width=2, height=1)
    normals = np.zeros((2, 2, 1, 2, 3), np.int8)  # (N objects, V views, H, W, 3)
    normals[0, 0, 0, 0] = normals_to_int8(np.array([1.0, 0, 0]))
    normals[1, 0, 0, 0] = normals_to_int8(np.array([0, 1.0, 0]))
    normals[0, 1, 0, 0] = normals_to_int8(np.array([0, 0, -1.0]))  # one object only there
    maps = mean_normal_maps(SimpleNamespace(normals=normals, cameras=cameras))
    np.testing.assert_allclose(maps[0, 0, 0], [2 ** -0.5, 2 ** -0.5, 0], atol=1e-6)
    np.testing.assert_allclose(maps[1, 0, 0], [0, 0, -1], atol=1e-6)
    facing = -cameras.forward.numpy()  # pixel (0, 1) is empty in both views
    np.testing.assert_allclose(maps[:, 0, 1], facing, atol=1e-6)


# ------------------------------------------------------------------------------------------------ training
def test_training_beats_the_mean_normal_baseline(splits, tmp_path):
    """Starting near 90 degrees on the validation objects, 120 iterations bring the error under the
    per-view mean normal map's (world space: the world-fixed lights show the world normal)."""
    train_split, val_split = splits
    cfg = config(iterations=120, batch_size=8, lr=2e-3, val_split="val", eval_every=60, val_views=8, space="world")
    result = run(train_split, tmp_path / "run", cfg, val=val_split)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in log if "val_angle" in row] == [60, 120]
    net = load_model(tmp_path / "run", network=NormalsNet)
    start = NormalsNet(image_size=32, channels=SMALL["channels"], space="world")
    views = np.arange(8)
    before, baseline = normal_errors(start, val_split, views, baseline=mean_normal_maps(train_split))
    after, _ = normal_errors(net, val_split, views)
    assert after.mean() == pytest.approx(result.metrics["val_angle"])
    assert before.mean() > 60 and after.mean() < baseline.mean(), (before.mean(), after.mean(), baseline.mean())


def test_resume_continues_exactly(splits, tmp_path):
    split = splits[0]
    run(split, tmp_path / "whole", config(iterations=4, checkpoint_every=2, dtype="float64"))
    run(split, tmp_path / "part", config(iterations=2, checkpoint_every=2, dtype="float64"))
    run(split, tmp_path / "part", config(iterations=4, checkpoint_every=2, dtype="float64"), resume=True)
    whole, part = run_state(tmp_path / "whole"), run_state(tmp_path / "part")
    assert part["iteration"] == 4
    for key in ("model", "disc"):
        for name in whole[key]:
            torch.testing.assert_close(part[key][name], whole[key][name], rtol=0, atol=0)
    assert part["d_optimizer"]["state"].keys() == whole["d_optimizer"]["state"].keys()


def test_validation_needs_normal_maps(splits, tmp_path):
    val = dataclasses.replace(splits[1], normals=None)
    with pytest.raises(InputError, match="validation split has no normal maps"):
        run(splits[0], tmp_path / "run", config(val_split="val"), val=val)


# ------------------------------------------------------------------------------------------------ predict-normals
def test_predict_normals_writes_what_the_scene_reader_reads(splits, normals_run, tmp_path):
    image = splits[1].images[0, 3].copy()
    image[..., 3] = np.where(image[..., 3] > 0, 255, 0)  # premultiplying (the CLI does) leaves it as it is
    write_png(tmp_path / "in.png", image)
    net = load_model(normals_run, network=NormalsNet)
    expected = predict_normal_map(net, image)
    for name in ("n.png", "n.npy"):
        assert main(["predict-normals", str(normals_run), str(tmp_path / "in.png"), "-o", str(tmp_path / name),
                     *FAST]) == 0
        read = validate_normals(read_normal_map(tmp_path / name), None, tmp_path / name)
        foreground = image[..., 3] > 0
        np.testing.assert_allclose(np.linalg.norm(read[foreground], axis=-1), 1, atol=1e-6)
        assert not read[~foreground].any()
        np.testing.assert_allclose(read, expected, atol=1e-4)  # 16-bit PNG: steps of 3e-5


def test_predict_normals_bad_input_is_one_line(capsys, splits, normals_run, tmp_path):
    image = splits[1].images[0, 3]
    write_png(tmp_path / "ok.png", image)
    write_png(tmp_path / "big.png", np.zeros((64, 64, 4), np.uint8) + 255)
    write_png(tmp_path / "empty_mask.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    tet = tmp_path / "tetrun"
    tetnet_train.train(splits[0], tet, tetnet_train.TetNetTrainConfig(
        batch_size=1, iterations=1, val_split=None, grid=16, channels=(16, 8, 8)), "cpu", progress=False, threads=1)
    cases = [  # (RUN, IMAGE and options, output, words of the error line)
        (normals_run, ["missing.png"], "n.png", ["missing.png", "no such file"]),
        (normals_run, ["corrupt.png"], "n.png", ["corrupt.png", "corrupt"]),
        (normals_run, ["big.png"], "n.png", ["big.png", "32x32", "64x64"]),
        (normals_run, ["ok.png", "--mask", "empty_mask.png"], "n.png", ["empty_mask.png", "no foreground"]),
        (tet, ["ok.png"], "n.png", ["TetNet network, not of a NormalsNet"]),
        (tmp_path / "no_run", ["ok.png"], "n.png", ["no_run"]),
        (normals_run, ["ok.png"], "n.jpg", ["n.jpg", ".png"]),
    ]
    for run_path, args, output, words in cases:
        args = [a if a.startswith("--") else str(tmp_path / a) for a in args]
        code = main(["predict-normals", str(run_path), *args, "-o", str(tmp_path / output), *FAST])
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and all(w in lines[0] for w in words), (args, err)
        assert not (tmp_path / output).exists()
    code = main(["predict", str(normals_run), str(tmp_path / "ok.png"), "-o", str(tmp_path / "m.ply"), *FAST])
    assert code == 2 and "use zerolevel predict-normals" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny version-2 dataset folder: 5 vases, 4 views at 32x32 (3 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("normals_set") / "set"
    write_dataset(root, generated_sources(["vase"], 5, seed=0), DatasetSettings(views=4, resolution=32),
                  (0.6, 0.2, 0.2), progress=False)
    return root


def test_cli_train_and_eval_set_print_the_angular_error_table(capsys, dataset, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "normals", str(dataset), "-o", str(out), "--iters", "2", "--batch-size", "2",
                 *SET_SMALL, *FAST])
    assert code == 0 and "val_angle" in capsys.readouterr().out
    code = main(["eval-set", str(out), str(dataset), "--json", str(tmp_path / "e.json"), *FAST])
    table = capsys.readouterr().out
    assert code == 0 and "mean normal map" in table and "< 11.25" in table
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["split"] == "test" and result["objects"] == 1 and result["views"] == [0, 1, 2, 3]
    for row in ("network", "baseline"):
        stats = result[row]
        assert stats["pixels"] > 0 and 0 <= stats["median"] <= 180 and 0 <= stats["within"]["30"] <= 100
    assert result["network"]["pixels"] == result["baseline"]["pixels"]
    code = main(["eval-set", str(out), str(dataset), "--gallery", str(tmp_path / "g.png"), *FAST])
    assert code == 2 and "--gallery does not apply" in capsys.readouterr().err


def test_cli_normals_from_applies_to_tetnet_only(capsys, dataset, tmp_path):
    code = main(["train", "softras", str(dataset), "-o", str(tmp_path / "run"), "--normals-from", "x", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--normals-from does not apply to softras" in err
    code = main(["train", "tetnet", str(dataset), "-o", str(tmp_path / "run"), "--normals-from",
                 str(tmp_path / "none"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "none" in err


def test_cli_encoder_from_needs_tetnet_a_pix2pix_encoder_and_a_normals_run_of_its_widths(capsys, dataset, normals_run,
                                                                                         tmp_path):
    cases = [(["softras", "--encoder-from", "x"], "--encoder-from does not apply to softras"),
             (["tetnet", "--encoder-from", str(normals_run)], "initialises the pix2pix encoder, not 'baseline'"),
             (["tetnet", "--encoder", "pix2pix", "--encoder-from", str(normals_run)], "another shape"),
             (["tetnet", "--encoder", "pix2pix", "--encoder-from", str(tmp_path / "none")], "none")]
    for i, (options, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        code = main(["train", options[0], str(dataset), "-o", str(out), *options[1:], "--iters", "1", *FAST])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (options, err)
        assert not out.exists()


# ------------------------------------------------------------------------------------------------ tetnet
def test_tetnet_trains_on_the_predicted_normals(splits, normals_run, tmp_path, monkeypatch):
    seen = []

    class Recorded(tetnet_train.TetNetTraining):
        def __init__(self, net, train_split, *args, **kwargs):
            seen.append(train_split)
            super().__init__(net, train_split, *args, **kwargs)

    monkeypatch.setattr(tetnet_train, "TetNetTraining", Recorded)
    split = dataclasses.replace(splits[0], normals=None)  # no ground-truth normals needed
    cfg = tetnet_train.TetNetTrainConfig(batch_size=2, iterations=2, val_split=None, log_every=1, grid=16,
                                         channels=(16, 8, 8), normals_from=str(normals_run))
    result = tetnet_train.train(split, tmp_path / "tet", cfg, "cpu", progress=False, threads=1)
    assert result.iterations == 2 and np.isfinite(result.losses["normal"])
    expected = predict_split_normals(load_model(normals_run, network=NormalsNet), splits[0])
    assert seen[0].normals.dtype == np.int8 and np.array_equal(seen[0].normals, expected)
    assert not np.array_equal(expected, splits[0].normals)
    assert split.normals is None  # the caller's split is left alone
    with pytest.raises(InputError, match="takes 32x32"):
        with_predicted_normals(SimpleNamespace(images=np.zeros((1, 2, 64, 64, 4), np.uint8)), normals_run)


def test_camera_space_networks_are_scored_and_used_in_world_space(splits, tmp_path):
    """A camera-space network's normals, turned by each view's rotation, are what evaluation and
    normals_from see: the world-space target turned into camera space and back is unchanged."""
    split = splits[0]
    rotations = split.cameras.R[torch.tensor([1, 5])].double()
    target = torch.from_numpy(split.normals[0, [1, 5]].astype(np.float64) / 127)
    torch.testing.assert_close(to_world(to_camera(target, rotations), rotations), target)
    camera = to_camera(target, rotations)
    foreground = target.norm(dim=-1) > 0
    facing = -torch.einsum("bhwk,bk->bhw", target, split.cameras.forward[[1, 5]].double())
    torch.testing.assert_close(camera[..., 2][foreground], -facing[foreground])  # z: towards the camera is -z
    run(split, tmp_path / "run", config(iterations=1))  # camera space: the default
    net = load_model(tmp_path / "run", network=NormalsNet)
    assert net.config.space == "camera"
    images = torch.from_numpy(split.images[0, [1, 5]]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        world = net.world_normals(images, split.cameras.R[[1, 5]])
        torch.testing.assert_close(world, to_world(net(images).permute(0, 2, 3, 1), split.cameras.R[[1, 5]]))
    assert not torch.allclose(world, net(images).permute(0, 2, 3, 1))
    predicted = predict_split_normals(net, split)  # int8: the batch's float rounding may flip a step
    difference = predicted[0, [1, 5]].astype(int) - normals_to_int8(world.double().numpy())
    assert np.abs(difference).max() <= 1


def test_the_pix2pix_encoder_starts_as_the_normals_networks_first_levels(splits, normals_run, tmp_path, monkeypatch):
    """encoder_from copies the generator's first four levels into TetNet's "pix2pix" encoder: the two
    compute the same features from an image; a generator of other widths is one InputError naming its run."""
    wide = tmp_path / "normals-wide"  # the encoder's widths (16, 32, 64, 128) and one more level
    run(splits[0], wide, config(iterations=1, channels=(16, 32, 64, 128, 128), d_channels=(8, 16, 32)))
    built = []

    class Recorded(tetnet_train.TetNetTraining):
        def __init__(self, net, *args, **kwargs):
            built.append(copy.deepcopy(net))  # as it starts
            super().__init__(net, *args, **kwargs)

    monkeypatch.setattr(tetnet_train, "TetNetTraining", Recorded)
    cfg = tetnet_train.TetNetTrainConfig(batch_size=2, iterations=1, val_split=None, log_every=1, grid=16,
                                         channels=(16, 8, 8), encoder="pix2pix", encoder_from=str(wide))
    tetnet_train.train(splits[0], tmp_path / "tet", cfg, "cpu", progress=False, threads=1)
    generator = load_model(wide, network=NormalsNet)
    images = torch.rand(3, 4, 32, 32)
    expected = images
    for level in generator.downs[:4]:
        expected = level(expected)
    with torch.no_grad():
        assert torch.allclose(built[0].encoder.features(images), expected, atol=1e-6)
        assert built[0].stem(images) is images  # no stem of TetNet's before pix2pix's first level
    narrow = dataclasses.replace(cfg, encoder_from=str(normals_run))  # widths (8, 16, 32, 32)
    with pytest.raises(InputError, match="another shape") as error:
        tetnet_train.train(splits[0], tmp_path / "tet2", narrow, "cpu", progress=False, threads=1)
    assert str(normals_run) in str(error.value)
    with pytest.raises(ValueError, match="pix2pix encoder"):
        tetnet_train.TetNetTrainConfig(encoder_from=str(wide))  # the baseline encoder takes no generator
