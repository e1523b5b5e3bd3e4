"""Scene folders: write/read round trips, atomic writes, one-line errors for bad input, normalisation."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import zerolevel.scene as scene_module
from zerolevel.atomic import atomic_path, write_json
from zerolevel.cameras import Cameras
from zerolevel.errors import InputError
from zerolevel.images import read_normal_map, write_normal_png
from zerolevel.scene import Scene, View, normalize_scene, read_scene

W, H = 48, 40


# ---------------------------------------------------------------------- a small synthetic scene
def random_unit(rng, shape) -> np.ndarray:
    v = rng.normal(size=shape + (3,))
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_scene(seed: int = 0, views: int = 2) -> Scene:
    """Two views with a disc mask, random unit normals inside it, an RGB image and a depth map."""
    rng = np.random.default_rng(seed)
    cams = Cameras.ring(views, elevation_deg=20, distance=3.0, fov_deg=40, width=W, height=H)
    yy, xx = np.mgrid[:H, :W]
    disc = (xx + 0.5 - W / 2) ** 2 + (yy + 0.5 - H / 2) ** 2 < 15 ** 2
    out = []
    for i in range(views):
        normal = random_unit(rng, (H, W)) * disc[..., None]
        depth = (rng.uniform(2, 4, (H, W)) * disc).astype(np.float32)
        image = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
        out.append(View(f"{i:03d}", cams.K[i].double().numpy(), cams.world_to_camera[i].double().numpy(),
                        W, H, light={"direction": [0.0, 1.0, -1.0], "intensity": 0.8},
                        normal=normal, mask=disc.copy(), image=image, depth=depth))
    to_world = np.diag([2.5, 2.5, 2.5, 1.0])
    to_world[:3, 3] = [1.0, -2.0, 3.0]
    return Scene(out, to_world)


@pytest.fixture
def scene_dir(tmp_path) -> Path:
    path = tmp_path / "scene"
    make_scene().write(path)
    return path


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("normal_format", ["png", "npy"])
def test_write_read_round_trip(tmp_path, normal_format):
    scene = make_scene()
    scene.write(tmp_path / "s", normal_format=normal_format)
    back = read_scene(tmp_path / "s")
    assert back.modalities() == {"normal", "mask", "image", "depth"}
    np.testing.assert_array_equal(back.to_world, scene.to_world)
    tol = 1e-4 if normal_format == "png" else 1e-6
    for a, b in zip(scene.views, back.views):
        assert (a.name, a.width, a.height, a.light) == (b.name, b.width, b.height, b.light)
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.world_to_camera, b.world_to_camera)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.depth, b.depth)
        assert np.abs(a.image - b.image).max() <= 0.5 / 255 + 1e-6
        assert np.abs(a.normal - b.normal).max() < tol
        assert b.normal.dtype == np.float32 and not b.normal[~b.mask].any()
    cams = back.cameras()
    assert len(cams) == 2 and (cams.width, cams.height) == (W, H)


def test_camera_space_normals_are_world_space_in_memory(tmp_path):
    scene = make_scene()
    scene.normal_space = "camera"
    scene.write(tmp_path / "s", normal_format="npy")
    assert json.loads((tmp_path / "s" / "scene.json").read_text())["normal_space"] == "camera"
    view = scene.views[1]
    on_disk = np.load(tmp_path / "s" / "normal" / "001.npy")
    np.testing.assert_allclose(on_disk, view.normal @ view.R.T, atol=1e-6)  # n_cam = R n_world
    back = read_scene(tmp_path / "s")
    assert back.normal_space == "camera"
    for a, b in zip(scene.views, back.views):
        np.testing.assert_allclose(b.normal, a.normal, atol=1e-6)


def test_eight_bit_normal_png_is_accepted(scene_dir):
    view = read_scene(scene_dir).views[0]
    rgb = np.round((view.normal + 1) / 2 * 255).astype(np.uint8)
    rgb[~view.mask] = 0
    iio.imwrite(scene_dir / "normal" / "000.png", rgb)
    back = read_scene(scene_dir).views[0]
    cos = (back.normal * view.normal).sum(-1)[view.mask]
    assert cos.min() > 0.999


def test_load_images_false_reads_cameras_only(scene_dir):
    scene = read_scene(scene_dir, load_images=False)
    assert len(scene.views) == 2 and scene.modalities() == set()
    assert len(scene.cameras()) == 2


def test_cameras_reject_mixed_sizes():
    scene = make_scene()
    scene.views[1].width = 50
    with pytest.raises(InputError, match="different image sizes"):
        scene.cameras()
    assert len(scene.cameras([0])) == 1


# ---------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_nothing_and_keeps_existing(tmp_path, monkeypatch):
    scene = make_scene()
    calls = []

    def failing_writer(path, normal):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        write_normal_png(path, normal)

    monkeypatch.setattr(scene_module, "write_normal_png", failing_writer)
    with pytest.raises(RuntimeError):
        scene.write(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(scene_module, "write_normal_png", write_normal_png)
    scene.write(tmp_path / "old")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    calls.clear()
    monkeypatch.setattr(scene_module, "write_normal_png", failing_writer)
    with pytest.raises(RuntimeError):
        make_scene(seed=1).write(tmp_path / "old")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and [p.name for p in tmp_path.iterdir()] == ["old"]



def test_atomic_file_onto_a_directory_is_one_line_input_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        write_json(tmp_path / "out", {"a": 1})
    with pytest.raises(InputError, match="is a directory"), atomic_path(tmp_path / "out"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------- bad input: one line naming the file
def _edit_json(path: Path, edit) -> None:
    data = json.loads((path / "scene.json").read_text())
    edit(data)
    (path / "scene.json").write_text(json.dumps(data))


def _non_unit_normals(path: Path) -> None:
    view = read_scene(path).views[0]
    write_normal_png(path / "normal" / "000.png", view.normal * 0.6)


def _nan_npy_normals(path: Path) -> None:
    read_scene(path).write(path, normal_format="npy")
    normal = np.load(path / "normal" / "001.npy")
    normal[20, 20] = np.nan
    np.save(path / "normal" / "001.npy", normal)


def _corrupt_png16(path: Path) -> None:
    data = bytearray((path / "normal" / "000.png").read_bytes())
    data[60:80] = bytes(20)  # inside the IDAT chunk: CRC no longer matches
    (path / "normal" / "000.png").write_bytes(bytes(data))


def _not_rotation(data: dict) -> None:
    data["views"][0]["world_to_camera"][0][0] *= 1.1


def _bad_K(data: dict) -> None:
    data["views"][1]["K"][0][0] = float("nan")


BAD_INPUTS = {
    "corrupt mask png": (lambda p: (p / "mask" / "000.png").write_bytes(
        np.random.default_rng(0).bytes(300)), "mask/000.png"),
    "corrupt 16-bit normal png": (_corrupt_png16, "normal/000.png"),
    "missing mask": (lambda p: (p / "mask" / "001.png").unlink(), "mask/001.png"),
    "image of another size": (lambda p: iio.imwrite(p / "image" / "001.png",
                                                    np.zeros((H, W + 2, 3), np.uint8)), "image/001.png"),
    "mask of another size": (lambda p: iio.imwrite(p / "mask" / "000.png",
                                                   np.zeros((H + 1, W), np.uint8)), "mask/000.png"),
    "non-unit normals": (_non_unit_normals, "normal/000.png"),
    "nan in npy normals": (_nan_npy_normals, "normal/001.npy"),
    "nan in depth": (lambda p: np.save(p / "depth" / "000.npy", np.full((H, W), np.nan, np.float32)),
                     "depth/000.npy"),
    "malformed json": (lambda p: (p / "scene.json").write_text('{"format": "zerolevel-scene",'),
                       "scene.json"),
    "missing key": (lambda p: _edit_json(p, lambda d: d["views"][0].pop("K")), "scene.json"),
    "rotation not orthonormal": (lambda p: _edit_json(p, _not_rotation), "scene.json"),
    "non-finite K": (lambda p: _edit_json(p, _bad_K), "scene.json"),
    "no scene.json": (lambda p: (p / "scene.json").unlink(), "scene.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_naming_the_file(scene_dir, case):
    damage, file = BAD_INPUTS[case]
    damage(scene_dir)
    with pytest.raises(InputError) as info:
        read_scene(scene_dir)
    message = str(info.value)
    assert "\n" not in message
    assert str(scene_dir / file) in message, message


def test_corrupt_exr_raises(tmp_path):
    (tmp_path / "n.exr").write_bytes(b"not an exr at all")
    with pytest.raises(InputError, match="n.exr"):
        read_normal_map(tmp_path / "n.exr")


# ---------------------------------------------------------------------- normalisation, rendering
def test_normalize_scene_keeps_projections():
    scene = make_scene()
    center, radius = np.array([0.2, -0.1, 0.3]), 1.7
    out = normalize_scene(scene, center, radius)
    x = torch.tensor(np.random.default_rng(2).normal(size=(20, 3)) * 0.5)
    uv0, z0 = scene.cameras(dtype=torch.float64).project(x)
    uv1, z1 = out.cameras(dtype=torch.float64).project((x - torch.tensor(center)) / radius)
    torch.testing.assert_close(uv1, uv0)
    torch.testing.assert_close(z1, z0 / radius)
    np.testing.assert_allclose(out.views[0].depth, scene.views[0].depth / radius, rtol=1e-6)
    p = np.array([0.3, 0.1, -0.2, 1.0])
    np.testing.assert_allclose(out.to_world @ p, scene.to_world @ np.r_[center + radius * p[:3], 1])


def test_from_render_thresholds_mask():
    cams = Cameras.ring(3, width=8, height=6)
    coverage = np.zeros((3, 6, 8), np.float32)
    coverage[:, 2:4, 2:6] = 1.0
    coverage[:, 1, 2:6] = 0.3  # partial coverage: outside the stored mask
    normal = np.zeros((3, 6, 8, 3), np.float32)
    normal[coverage > 0] = [0, 0, -1]
    out = Scene.from_render(cams, {"mask": coverage, "normal": torch.as_tensor(normal),
                                   "depth": coverage * 2, "image": coverage}, np.eye(4),
                            light={"direction": [0, 0, -1], "intensity": 1.0})
    assert [v.name for v in out.views] == ["000", "001", "002"]
    assert out.modalities() == {"normal", "mask", "depth", "image"}
    v = out.views[0]
    assert v.mask.sum() == 8 and not v.normal[1].any() and not v.depth[1].any()
    assert v.light == {"direction": [0, 0, -1], "intensity": 1.0}


