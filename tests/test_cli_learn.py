"""`zerolevel train / predict / eval-set` on a tiny dataset (2 categories x 3 objects, 4 views at 32x32):
outputs, resuming, the gallery picture, and bad input as exit code 2 with one line and no output file."""

import json

import imagecodecs
import numpy as np
import pytest
from conftest import run_state as load_checkpoint
import trimesh

from zerolevel.cli import main
from zerolevel.geometry.mesh import load_mesh
from zerolevel.images import write_png
from zerolevel.learn.dataset.folder import load_split
from zerolevel.learn.dataset.settings import DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources
from zerolevel.learn.dataset.views import render_rgba
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.learn.gallery import BACKGROUND, GAP, gallery_objects
from zerolevel.optim.loop import read_log
from zerolevel.render.raycast import MeshRayCaster

FAST = ["-q", "--threads", "1"]
TRAIN = ["--batch-size", "2", *FAST]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn") / "set"
    write_dataset(root, generated_sources(["chair", "vase"], 3, seed=0), DatasetSettings(views=4, resolution=32),
                  progress=False)
    return root


@pytest.fixture(scope="module")
def run(dataset):
    """A network trained for 2 iterations from the command line."""
    out = dataset.parent / "run"
    assert main(["train", "softras", str(dataset), "-o", str(out), "--iters", "2", *TRAIN]) == 0
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, *FAST])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in err


def test_train_writes_a_run_and_resume_continues(capsys, dataset, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = cli(capsys, "train", "softras", str(dataset), "-o", str(out), "--iters", "1",
                          "--batch-size", "2", "--no-cross-render", "--set", "val_views=2")
    assert code == 0
    assert len(stdout.strip().splitlines()) == 1 and "1 iterations" in stdout and "checkpoint.pt" in stdout
    for name in ("checkpoint.pt", "log.jsonl", "training.svg", "summary.json"):
        assert (out / name).is_file(), name
    saved = load_checkpoint(out)
    assert saved["iteration"] == 1 and saved["config"]["cross_render"] is False
    assert saved["config"]["val_views"] == 2 and saved["net"]["image_size"] == 32
    # a second run into the same folder must not silently overwrite it
    code, _, err = cli(capsys, "train", "softras", str(dataset), "-o", str(out), "--iters", "2")
    assert code == 2
    assert_one_line_error(err, "--resume")
    # --resume keeps the run's own settings (no need to repeat --no-cross-render) and continues
    code, stdout, _ = cli(capsys, "train", "softras", str(dataset), "-o", str(out), "--iters", "2", "--resume")
    assert code == 0 and "resumed at 1" in stdout
    saved = load_checkpoint(out)
    assert saved["iteration"] == 2 and saved["config"]["cross_render"] is False
    assert [row["iter"] for row in read_log(out / "log.jsonl") if "loss" in row] == [1, 2]
    # ... and refuses a change of what was learnt with
    code, _, err = cli(capsys, "train", "softras", str(dataset), "-o", str(out), "--iters", "3", "--resume",
                       "--encoder", "resnet")
    assert code == 2
    assert_one_line_error(err, "encoder")


@pytest.mark.parametrize("args, words", [
    (["--dataset", "MISSING"], ["nothing"]),
    (["--set", "nosuch=1"], ["nosuch"]),
    (["--set", "encoder=vgg"], ["vgg"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--iters", "-1"], ["--iters"]),
])
def test_train_bad_input(capsys, dataset, tmp_path, args, words):
    data = str(dataset)
    if args[:2] == ["--dataset", "MISSING"]:
        data, args = str(tmp_path / "nothing"), []
    code, _, err = cli(capsys, "train", "softras", data, "-o", str(tmp_path / "run"), "--iters", "1", *args)
    assert code == 2
    assert_one_line_error(err, *words)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_predict_writes_a_closed_template_mesh(capsys, dataset, run, tmp_path):
    image = load_split(dataset, "test").images[0, 1]
    write_png(tmp_path / "view.png", image)
    code, stdout, _ = cli(capsys, "predict", str(run), str(tmp_path / "view.png"), "-o", str(tmp_path / "m.ply"))
    assert code == 0 and "642 vertices" in stdout
    mesh = trimesh.load(tmp_path / "m.ply", process=False)
    assert len(mesh.vertices) == 642 and len(mesh.faces) == 1280 and mesh.is_watertight
    assert np.abs(mesh.vertices).max() < 0.5  # the dataset's frame: inside [-0.5, 0.5]^3
    # RGB + mask, through the checkpoint file, as OBJ: the same input gives the same mesh
    write_png(tmp_path / "rgb.png", image[..., :3])
    write_png(tmp_path / "mask.png", np.where(image[..., 3] > 127, 255, 0).astype(np.uint8))
    binary = image.copy()
    binary[..., 3] = np.where(image[..., 3] > 127, 255, 0)
    write_png(tmp_path / "binary.png", binary)
    for name, extra in (("a.obj", ["binary.png"]), ("b.obj", ["rgb.png", "--mask", str(tmp_path / "mask.png")])):
        code, _, _ = cli(capsys, "predict", str(run / "checkpoint.pt"), str(tmp_path / extra[0]), *extra[1:],
                         "-o", str(tmp_path / name))
        assert code == 0
    a, b = (trimesh.load(tmp_path / n, process=False) for n in ("a.obj", "b.obj"))
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)


def test_predict_bad_input_is_one_line_and_no_mesh(capsys, run, tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 10:22] = 200
    write_png(tmp_path / "big.png", np.zeros((64, 64, 4), np.uint8) + 255)
    write_png(tmp_path / "empty.png", np.zeros((32, 32, 4), np.uint8))
    write_png(tmp_path / "rgb.png", rgba[..., :3])
    write_png(tmp_path / "ok.png", rgba)
    write_png(tmp_path / "small_mask.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = [  # (RUN, IMAGE and options, output, words of the error line)
        (run, ["big.png"], "m.ply", ["big.png", "32x32", "64x64", "resize"]),
        (run, ["empty.png"], "m.ply", ["empty.png", "no foreground"]),
        (run, ["rgb.png"], "m.ply", ["rgb.png", "alpha", "--mask"]),
        (run, ["ok.png", "--mask", "small_mask.png"], "m.ply", ["small_mask.png", "16x16"]),
        (run, ["corrupt.png"], "m.ply", ["corrupt.png"]),
        (tmp_path / "no_run", ["ok.png"], "m.ply", ["no_run"]),
        (run, ["ok.png"], "m.xyz1", ["m.xyz1", ".ply"]),
    ]
    for run_path, args, output, words in cases:
        args = [a if a.startswith("--") else str(tmp_path / a) for a in args]
        code, _, err = cli(capsys, "predict", str(run_path), *args, "-o", str(tmp_path / output))
        assert code == 2, args
        assert_one_line_error(err, *words)
        assert not (tmp_path / output).exists()
        assert not list(tmp_path.glob(".m.*"))  # no temporary file left either


def test_eval_set_prints_the_table_and_writes_json(capsys, dataset, run, tmp_path):
    code, stdout, _ = cli(capsys, "eval-set", str(run), str(dataset), "--views", "2", "--points", "2000",
                          "--json", str(tmp_path / "metrics.json"))
    assert code == 0
    lines = stdout.splitlines()
    assert lines[1].split()[:4] == ["category", "objects", "IoU", "mean-shape"]
    assert [line.split()[0] for line in lines[2:5]] == ["chair", "vase", "mean"]
    assert "mean shape:" in stdout and "F@0.005" in stdout
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert {"iou", "mean_shape", "surface", "per_object", "views", "split", "checkpoint"} <= set(result)
    assert set(result["iou"]["per_category"]) == {"chair", "vase"} and result["views"] == [0, 2]
    assert result["checkpoint"]["iteration"] == 2 and result["objects"] == 2
    assert 0 <= result["mean_shape"]["iou"]["mean"] <= 1 and result["mean_shape"]["threshold"] > 0
    assert set(result["surface"]["fscore"]) == {"0.005", "0.0025"} and result["surface"]["views"] == [0]
    row = result["per_object"][0]
    assert len(row["iou"]) == 2 and len(row["chamfer"]) == 1
    ious = [np.mean(r["iou"]) for r in result["per_object"]]  # one object per category here
    assert result["iou"]["mean"] == pytest.approx(np.mean(ious))


@pytest.mark.parametrize("args, words", [
    (["--views", "0"], ["--views"]),
    (["--split", "val", "--surface-views", "-1"], ["--surface-views"]),
    (["--gallery", "g.png", "--gallery-objects", "0"], ["--gallery-objects"]),
    (["--gallery", ".", "--split", "val"], ["directory"]),
    (["RUN_MISSING"], ["nothing"]),
])
def test_eval_set_bad_input(capsys, dataset, run, tmp_path, args, words):
    run_path = str(tmp_path / "nothing") if args == ["RUN_MISSING"] else str(run)
    args = [] if args == ["RUN_MISSING"] else args
    code, _, err = cli(capsys, "eval-set", run_path, str(dataset), *args, "--json", str(tmp_path / "m.json"))
    assert code == 2
    assert_one_line_error(err, *words)
    assert not (tmp_path / "m.json").exists()


def test_eval_set_gallery_shows_input_prediction_and_truth(capsys, dataset, run, tmp_path):
    path = tmp_path / "gallery.png"
    code, stdout, _ = cli(capsys, "eval-set", str(run), str(dataset), "--views", "1", "--surface-views", "0",
                          "--gallery", str(path))
    assert code == 0 and f"wrote {path}" in stdout
    sheet = imagecodecs.png_decode(path.read_bytes())
    test = load_split(dataset, "test")  # one chair, one vase; 4 views at 32^2, tiles upscaled x2
    tile, step = 64, 64 + GAP
    assert sheet.shape == (2 * step + GAP, 6 * step + GAP, 3)

    def tile_at(row, column):
        top, left = GAP + row * step, GAP + column * step
        return sheet[top:top + tile, left:left + tile]

    for row in range(2):  # input = view 0, truth +90 = view 1, truth +180 = view 2
        for column, view in ((0, 0), (3, 1), (5, 2)):
            rgba = test.images[row, view].astype(np.float64)
            expected = rgba[..., :3] + BACKGROUND * (1 - rgba[..., 3:] / 255)
            assert np.abs(tile_at(row, column)[::2, ::2] - expected).max() <= 0.5 + 1e-9
        assert (tile_at(row, 1) != BACKGROUND).any()  # the prediction is drawn


def test_gallery_renders_as_the_dataset_does(dataset):
    """The predictions' renderer reproduces the dataset's images from the objects' meshes."""
    test = load_split(dataset, "test")
    for index in range(len(test)):
        caster = MeshRayCaster(load_mesh(test.mesh_path(index)), crease_deg=None)  # generated objects: smooth
        rendered = render_rgba(caster, test.cameras).astype(np.int64)
        assert np.abs(rendered - test.images[index]).max() <= 1
    assert gallery_objects(["a", "b", "a", "a", "b", "c"], 2) == [0, 2, 1, 4, 5]
