"""The command line: every bad input gives exit code 2 and one line naming the file; outputs are whole."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from conftest import assert_one_line_error
from zerolevel.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "-q", "--threads", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def sphere_path(tmp_path) -> Path:
    path = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=0.5).export(path)
    return path


def test_render_missing_mesh(capsys, tmp_path):
    code, _, err = run_cli(capsys, "render", str(tmp_path / "nope.obj"), "-o", str(tmp_path / "s"))
    assert code == 2
    assert_one_line_error(err, "nope.obj")
    assert not (tmp_path / "s").exists()


def test_render_corrupt_mesh(capsys, tmp_path):
    bad = tmp_path / "corrupt.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n" + os.urandom(64))
    code, _, err = run_cli(capsys, "render", str(bad), "-o", str(tmp_path / "s"))
    assert code == 2
    assert_one_line_error(err, "corrupt.ply")
    assert not (tmp_path / "s").exists()


def test_render_mesh_without_faces(capsys, tmp_path):
    points_only = tmp_path / "points.obj"
    points_only.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    code, _, err = run_cli(capsys, "render", str(points_only), "-o", str(tmp_path / "s"))
    assert code == 2
    assert_one_line_error(err, "points.obj")
    assert "no faces" in err


def test_render_camera_that_sees_nothing(capsys, tmp_path, sphere_path):
    code, _, err = run_cli(capsys, "render", str(sphere_path), "-o", str(tmp_path / "s"),
                           "--views", "2", "--res", "8", "--distance", "5000")
    assert code == 2
    assert_one_line_error(err, "sphere.ply")
    assert "see none" in err
    assert not (tmp_path / "s").exists()


def test_render_writes_a_scene(capsys, tmp_path, sphere_path):
    out = tmp_path / "scene"
    code, stdout, err = run_cli(capsys, "render", str(sphere_path), "-o", str(out), "--views", "3", "--res", "32")
    assert code == 0, err
    meta = json.loads((out / "scene.json").read_text())
    assert len(meta["views"]) == 3
    for sub in ("normal", "mask", "image", "depth"):
        assert len(list((out / sub).iterdir())) == 3, sub
    # the sphere of radius 0.5 is normalised into the unit sphere; to_world maps back
    to_world = np.array(meta["to_world"])
    assert np.isclose(np.linalg.det(to_world[:3, :3]) ** (1 / 3), 0.5 / 0.9, rtol=1e-2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_eval_missing_prediction(capsys, tmp_path, sphere_path):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "pred.ply"), str(sphere_path))
    assert code == 2
    assert_one_line_error(err, "pred.ply")


def test_eval_identical_meshes_json(capsys, tmp_path, sphere_path):
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(capsys, "eval", str(sphere_path), str(sphere_path),
                                "--json", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["fscore"]["0.005"] > 0.99
    assert result["tau_units"] == "gt_bbox_diagonal"
    assert "chamfer" in stdout.lower()


def test_console_entry_point_help():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    for verb in ("render", "import", "info", "fit", "extract", "eval", "demo"):
        done = subprocess.run([sys.executable, "-m", "zerolevel", verb, "--help"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "examples:" in done.stdout


# ---------------------------------------------------------------------- scene folders through the CLI
@pytest.fixture
def scene_dir(capsys, tmp_path, sphere_path) -> Path:
    out = tmp_path / "scene"
    assert run_cli(capsys, "render", str(sphere_path), "-o", str(out), "--views", "2", "--res", "24")[0] == 0
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    from zerolevel.images import write_png

    write_png(path, array)


BAD_SCENES = {
    "image of mismatched size": (lambda s: _write_png(s / "image" / "001.png", np.zeros((24, 30), np.uint8)),
                                 "image/001.png"),
    "corrupt mask": (lambda s: (s / "mask" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
                     "mask/000.png"),
    "normal map not unit length": (
        lambda s: _write_png(s / "normal" / "000.png", np.full((24, 24, 3), 40000, np.uint16)), "normal/000.png"),
    "camera sees nothing": (lambda s: _write_png(s / "mask" / "001.png", np.zeros((24, 24), np.uint8)),
                            "mask/001.png"),
    "missing depth": (lambda s: (s / "depth" / "000.npy").unlink(), "depth/000.npy"),
    "NaN depth": (lambda s: np.save(s / "depth" / "001.npy", np.full((24, 24), np.nan, np.float32)),
                  "depth/001.npy"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENES))
def test_info_bad_scene_exit_2_one_line(capsys, scene_dir, case):
    damage, name = BAD_SCENES[case]
    assert run_cli(capsys, "info", str(scene_dir))[0] == 0
    damage(scene_dir)
    code, _, err = run_cli(capsys, "info", str(scene_dir))
    assert code == 2, case
    assert_one_line_error(err, name)


def test_import_missing_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "import", "neus", str(tmp_path / "nothing"), "-o", str(tmp_path / "s"))
    assert code == 2
    assert_one_line_error(err, "nothing")


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_render_with_the_cameras_of_a_neus_folder(capsys, tmp_path):
    """Rendering the NeuS folder's GT mesh with its own cameras reproduces its masks and normals."""
    neus = DATA / "neus_layout_spot"
    if not neus.is_dir():
        pytest.skip("shared NeuS-layout data not present")
    from zerolevel.importers import load_scene

    out = tmp_path / "again"
    code, _, err = run_cli(capsys, "render", str(neus / "mesh_Gt.ply"), "-o", str(out), "--cameras", str(neus),
                           "--supersample", "1", "--face-normals")  # the NeuS GT has face normals
    assert code == 0, err
    original, again = load_scene(neus), load_scene(out)
    np.testing.assert_allclose(again.to_world, original.to_world)
    for a, b in zip(original.views, again.views):
        assert a.name == b.name
        iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
        assert iou > 0.99, (a.name, iou)
        both = a.mask & b.mask
        cos = (a.normal[both] * b.normal[both]).sum(-1)
        assert np.median(cos) > 0.9999


def test_render_with_a_fixed_light(capsys, tmp_path, sphere_path):
    from zerolevel.scene import read_scene

    out = tmp_path / "lit"
    code, _, err = run_cli(capsys, "render", str(sphere_path), "-o", str(out), "--views", "2", "--res", "32",
                           "--light", "0", "1", "0")
    assert code == 0, err
    scene = read_scene(out)
    for view in scene.views:
        assert view.light["direction"] == [0.0, 1.0, 0.0]
        lit = view.mask & (view.normal[..., 1] > 0.5)
        dark = view.mask & (view.normal[..., 1] < -0.2)
        assert view.image[lit].mean() > view.image[dark].mean() + 0.3


def test_render_with_several_lights_cycles_them_over_the_views(capsys, tmp_path, sphere_path):
    from zerolevel.scene import read_scene

    out = tmp_path / "lit3"
    code, _, err = run_cli(capsys, "render", str(sphere_path), "-o", str(out), "--views", "4", "--res", "32",
                           "--light", "0", "1", "0", "--light", "1", "0", "0", "--light", "0", "0", "2")
    assert code == 0, err
    scene = read_scene(out)
    expected = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert [view.light["direction"] for view in scene.views] == expected
    for view, towards in zip(scene.views, expected):
        lit = view.mask & ((view.normal @ np.asarray(towards)) > 0.5)
        dark = view.mask & ((view.normal @ np.asarray(towards)) < -0.2)
        if lit.any() and dark.any():
            assert view.image[lit].mean() > view.image[dark].mean() + 0.3
    code, _, err = run_cli(capsys, "render", str(sphere_path), "-o", str(tmp_path / "bad"), "--views", "2",
                           "--res", "32", "--light", "0", "1", "0", "--light", "0", "0", "0")
    assert code == 2 and "--light" in err and len(err.strip().splitlines()) == 1


def test_eval_iou(capsys, tmp_path, sphere_path):
    out = tmp_path / "m.json"
    code, _, err = run_cli(capsys, "eval", str(sphere_path), str(sphere_path), "--iou", "32", "--json", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["iou"] > 0.999 and result["watertight"] == {"pred": True, "gt": True}


def test_eval_iou_of_an_open_mesh_warns_in_one_line(capsys, tmp_path, sphere_path):
    sphere = trimesh.load(sphere_path)
    open_mesh = tmp_path / "open.ply"
    trimesh.Trimesh(sphere.vertices, sphere.faces[:-10]).export(open_mesh)
    code, stdout, err = run_cli(capsys, "eval", str(open_mesh), str(sphere_path), "--iou", "16")
    assert code == 0
    warning_lines = [line for line in err.splitlines() if "warning" in line]
    assert len(warning_lines) == 1 and "not watertight" in warning_lines[0] and "prediction" in warning_lines[0]
    assert "iou" in stdout.lower()


def test_render_close_holes_writes_the_capped_ground_truth(capsys, tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    keep = sphere.triangles_center[:, 2] > -0.45  # an open base
    path = tmp_path / "open.ply"
    trimesh.Trimesh(sphere.vertices, sphere.faces[keep]).export(path)
    out = tmp_path / "scene"
    code, stdout, err = run_cli(capsys, "render", str(path), "-o", str(out), "--views", "2", "--res", "16",
                                "--close-holes")
    assert code == 0, err
    closed = trimesh.load(out / "closed_mesh.ply", process=False)
    assert closed.is_watertight and closed.volume > 0
    assert np.allclose(closed.bounds, trimesh.Trimesh(sphere.vertices, sphere.faces[keep]).bounds)  # mesh units
    assert "closed_mesh.ply" in stdout


def test_render_groups_renders_only_the_named_obj_groups(capsys, tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    far_box = trimesh.creation.box(extents=(0.2, 0.2, 0.2)).apply_translation([3.0, 0.0, 0.0])
    lines = [f"v {x} {y} {z}" for x, y, z in np.concatenate([sphere.vertices, far_box.vertices])]
    lines += ["g body"] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in sphere.faces]
    n = len(sphere.vertices) + 1
    lines += ["g helper"] + [f"f {a + n} {b + n} {c + n}" for a, b, c in far_box.faces]
    path = tmp_path / "asset.obj"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scene"
    code, _, err = run_cli(capsys, "render", str(path), "-o", str(out), "--views", "2", "--res", "16",
                           "--groups", "body")
    assert code == 0, err
    to_world = np.array(json.loads((out / "scene.json").read_text())["to_world"])
    assert np.allclose(to_world[:3, 3], 0.0, atol=1e-6)  # centred on the sphere alone, not on sphere + box
    code, _, err = run_cli(capsys, "render", str(path), "-o", str(tmp_path / "bad"), "--groups", "hair")
    assert code == 2 and "no group hair" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
