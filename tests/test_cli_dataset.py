"""`zerolevel dataset`: writes a loadable folder, resumes, and bad input is exit code 2 with one line."""

import json

import pytest
import trimesh

from conftest import assert_one_line_error
from zerolevel.cli import build_parser, main
from zerolevel.cli.learning import dataset_defaults
from zerolevel.learn.dataset.folder import load_split
from zerolevel.learn.shapes import CATEGORIES

SMALL = ["--views", "4", "--res", "32", "-q", "--threads", "1"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, *SMALL])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_a_dataset_and_a_rerun_reuses_it(capsys, tmp_path):
    out = tmp_path / "set"
    code, stdout, _ = run_cli(capsys, "dataset", "--generate", "chair,vase", "--count", "3", "-o", str(out),
                              "--splits", "0.6,0.2,0.2", "--seed", "5")
    assert code == 0
    assert len(stdout.strip().splitlines()) == 1
    assert "6 objects" in stdout and "6 rendered" in stdout
    info = json.loads((out / "dataset.json").read_text())
    assert info["seed"] == 5 and info["source"]["kind"] == "generated"
    assert info["splits"] == {"train": 2, "val": 2, "test": 2}
    train = load_split(out, "train")
    assert train.images.shape == (2, 4, 32, 32, 4) and train.voxels.shape == (2, 32, 32, 32)
    code, stdout, _ = run_cli(capsys, "dataset", "--generate", "chair,vase", "--count", "3", "-o", str(out),
                              "--splits", "0.6,0.2,0.2", "--seed", "5")
    assert code == 0 and "0 rendered, 6 from the cache" in stdout


def test_for_tetnet_picks_128_and_varied_lighting():
    args = build_parser().parse_args(["dataset", "--generate", "chair", "-o", "set", "--for", "tetnet"])
    assert dataset_defaults(args.network, args.res, args.lighting) == {"resolution": 128, "lighting": "varied"}
    args = build_parser().parse_args(["dataset", "--generate", "chair", "-o", "set"])
    assert dataset_defaults(args.network, args.res, args.lighting) == {"resolution": 64, "lighting": "headlight"}
    args = build_parser().parse_args(["dataset", "--generate", "chair", "-o", "set", "--for", "tetnet",
                                      "--res", "96", "--lighting", "headlight"])
    assert dataset_defaults(args.network, args.res, args.lighting) == {"resolution": 96, "lighting": "headlight"}


def test_for_tetnet_writes_varied_lighting_and_normals(capsys, tmp_path):
    out = tmp_path / "set"
    code, stdout, _ = run_cli(capsys, "dataset", "--generate", "vase", "--count", "1", "-o", str(out),
                              "--for", "tetnet")  # SMALL's --res 32 overrides tetnet's 128
    assert code == 0 and "32x32 (varied)" in stdout
    info = json.loads((out / "dataset.json").read_text())
    assert (info["version"], info["resolution"], info["lighting"]) == (2, 32, "varied")
    train = load_split(out, "train", normals=True)
    assert train.normals.shape == (1, 4, 32, 32, 3)


def test_unknown_network_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["dataset", "--generate", "chair", "-o", str(tmp_path / "set"), "--for", "nerf"])
    assert caught.value.code == 2 and "--for" in capsys.readouterr().err


def test_mesh_folders(capsys, tmp_path):
    for category in ("cube", "ball"):
        (tmp_path / "in" / category).mkdir(parents=True)
    trimesh.creation.box().export(tmp_path / "in" / "cube" / "a.ply")
    trimesh.creation.icosphere(2).export(tmp_path / "in" / "ball" / "b.obj")
    code, stdout, _ = run_cli(capsys, "dataset", str(tmp_path / "in"), "-o", str(tmp_path / "set"))
    assert code == 0, stdout
    info = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert info["categories"] == ["ball", "cube"] and info["source"]["kind"] == "meshes"
    assert sorted(p.name for p in (tmp_path / "set" / "meshes").iterdir()) == ["ball_b.ply", "cube_a.ply"]


@pytest.mark.parametrize("args, name", [
    (["MISSING"], "nope.obj"),
    (["--generate", "chair,sofa"], "sofa"),
    (["--generate", "chair", "--splits", "0.5,0.5"], "--splits"),
    (["--generate", "chair", "--splits", "a,b,c"], "--splits"),
    (["--generate", "chair", "--count", "0"], "--count"),
    ([], "--generate"),
])
def test_bad_input_is_one_line_and_no_folder(capsys, tmp_path, args, name):
    args = [str(tmp_path / "nope.obj") if a == "MISSING" else a for a in args]
    code, _, err = run_cli(capsys, "dataset", *args, "-o", str(tmp_path / "set"))
    assert code == 2
    assert_one_line_error(err, name)
    assert not (tmp_path / "set").exists()


def test_corrupt_mesh_leaves_no_folder(capsys, tmp_path):
    folder = tmp_path / "in" / "things"
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "a.ply")
    (folder / "b.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n" + bytes(40))
    code, _, err = run_cli(capsys, "dataset", str(tmp_path / "in"), "-o", str(tmp_path / "set"))
    assert code == 2
    assert_one_line_error(err, "b.ply")
    assert not (tmp_path / "set").exists()


def test_help_names_every_category(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dataset", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "examples:" in text
    assert all(category in text for category in CATEGORIES)
