"""Importers on data the tests write themselves: a sphere drawn analytically through known cameras
in the NeuS layout (`cameras_sphere.npz`, EXR normals, PNG masks and images) and the Middlebury
layout (`*_par.txt`, PNG images on black). Cameras round-trip, the object lands inside the unit
sphere, masks and normals match the sphere, and bad input is named. No ../shared data needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from scipy import ndimage

from zerolevel.errors import InputError
from zerolevel.images import write_mask, write_png
from zerolevel.importers import import_middlebury, import_neus, load_scene
from zerolevel.scene import Scene

CENTER, RADIUS = np.array([0.1, -0.05, 0.2]), 0.35  # the sphere, in the dataset's own units
WIDTH, HEIGHT = 64, 52  # not square: a transposed image or K would show; the sphere
# (~30 px across) stays 10 px from the border, which Middlebury's silhouette closing does not erode
VIEWS = 8
SHIFT = np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])  # their pixel centres are integers, ours + 0.5


# ---------------------------------------------------------------------- the synthetic sphere
def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV world -> camera [R|t] (x right, y down, z forward), world y up."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    W2C = np.eye(4)
    W2C[:3, :3], W2C[:3, 3] = R, -R @ eye
    return W2C


def _cameras() -> list[tuple[np.ndarray, np.ndarray]]:
    """VIEWS (K, world_to_camera) on a ring around the sphere, each with its own intrinsics."""
    cameras = []
    for i in range(VIEWS):
        azimuth, elevation = 2 * np.pi * i / VIEWS, np.radians(25 if i % 2 else -10)
        eye = CENTER + 1.6 * np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                                       np.cos(elevation) * np.cos(azimuth)])
        K = np.array([[58.0 + i, 0.0, 31.3 + 0.1 * i], [0.0, 60.0 + i, 25.6 - 0.1 * i], [0.0, 0.0, 1.0]])
        cameras.append((K, _look_at(eye, CENTER)))
    return cameras


def _hits(K: np.ndarray, W2C: np.ndarray, center: np.ndarray, radius: float,
          offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool mask and (H, W, 3) unit normals of the sphere through pixel centres at integer +
    `offset` (0: the NeuS / Middlebury convention, 0.5: ours)."""
    R, t = W2C[:3, :3], W2C[:3, 3]
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + offset
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ R  # R^T K^-1 (u, v, 1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    to_eye = -R.T @ t - center
    b = rays @ to_eye
    disc = b ** 2 - (to_eye @ to_eye - radius ** 2)
    mask = disc > 0
    depth = -b - np.sqrt(np.where(mask, disc, 0.0))
    normal = (to_eye + depth[..., None] * rays) / radius
    return mask, np.where(mask[..., None], normal, 0.0)


def _shaded(mask: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 Lambertian sphere on black, bright enough for Middlebury's threshold."""
    light = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
    grey = np.where(mask, 0.4 + 0.6 * np.clip(normal @ light, 0, 1), 0.0)
    return np.round(np.repeat(grey[..., None], 3, -1) * 255).astype(np.uint8)


def _write_exr(path: Path, normal: np.ndarray) -> None:
    channels = {c: np.ascontiguousarray(normal[..., i], dtype=np.float32) for i, c in enumerate("RGB")}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, channels) as exr:
        exr.write(str(path))


def _scale(scene: Scene) -> float:
    """The uniform scale of a scene's `to_world` (working units -> dataset units)."""
    return float(np.cbrt(np.linalg.det(scene.to_world[:3, :3])))


def _assert_cameras_round_trip(scene: Scene) -> None:
    """Each view's K (less the half-pixel shift) and, through `to_world`, its world -> camera
    [R|t] in the dataset's units equal the cameras the data was written with."""
    assert len(scene.views) == VIEWS
    s = _scale(scene)
    for view, (K, W2C) in zip(scene.views, _cameras()):
        assert (view.width, view.height) == (WIDTH, HEIGHT)
        np.testing.assert_allclose(view.K - SHIFT, K, rtol=0, atol=1e-5)
        pose = s * (view.world_to_camera @ scene.from_world)[:3]  # camera units were working units
        np.testing.assert_allclose(pose, W2C[:3], rtol=0, atol=1e-5)


def _working_sphere(scene: Scene) -> tuple[np.ndarray, float]:
    return (scene.from_world @ np.r_[CENTER, 1.0])[:3], RADIUS / _scale(scene)


def _true_masks(scene: Scene) -> list[np.ndarray]:
    """Per view, the (H, W) mask of the working-space sphere seen through the imported camera and
    our pixel centres (integer + 0.5)."""
    center, radius = _working_sphere(scene)
    return [_hits(v.K, v.world_to_camera, center, radius, 0.5)[0] for v in scene.views]


# ---------------------------------------------------------------------- NeuS layout
# The dataset's unit sphere (where the object lies) -> world: scale 0.5, rotated, off-centre.
_ROTATION = np.array([[np.cos(0.5), 0.0, np.sin(0.5)], [0.0, 1.0, 0.0], [-np.sin(0.5), 0.0, np.cos(0.5)]])
SCALE_MAT = np.eye(4)
SCALE_MAT[:3, :3], SCALE_MAT[:3, 3] = 0.5 * _ROTATION, CENTER + [0.03, 0.0, -0.02]


def _write_neus(root: Path) -> Path:
    """A NeuS / IDR folder: cameras_sphere.npz (world_mat_i = K [R|t], scale_mat_i), image/,
    mask/ and normal_world_space_GT/ (float EXR, background 0), files named 00, 01, ..."""
    for folder in ("image", "mask", "normal_world_space_GT"):
        (root / folder).mkdir(parents=True)
    arrays = {}
    for i, (K, W2C) in enumerate(_cameras()):
        world = np.eye(4)
        world[:3] = K @ W2C[:3]
        arrays[f"world_mat_{i}"], arrays[f"scale_mat_{i}"] = world, SCALE_MAT
        mask, normal = _hits(K, W2C, CENTER, RADIUS, 0.0)
        write_mask(root / "mask" / f"{i:02d}.png", mask)
        write_png(root / "image" / f"{i:02d}.png", _shaded(mask, normal))
        _write_exr(root / "normal_world_space_GT" / f"{i:02d}.exr", normal)
    np.savez(root / "cameras_sphere.npz", **arrays)
    return root


@pytest.fixture(scope="module")
def neus_folder(tmp_path_factory) -> Path:
    return _write_neus(tmp_path_factory.mktemp("neus") / "sphere")


@pytest.fixture()
def neus_copy(neus_folder, tmp_path) -> Path:
    return Path(shutil.copytree(neus_folder, tmp_path / "neus"))


def test_neus_cameras_round_trip(neus_folder):
    scene = import_neus(neus_folder)
    assert scene.modalities() == {"normal", "mask", "image"}
    assert [v.name for v in scene.views] == [f"{i:02d}" for i in range(VIEWS)]
    _assert_cameras_round_trip(scene)
    np.testing.assert_allclose(scene.to_world, SCALE_MAT, rtol=0, atol=1e-12)


def test_neus_object_inside_the_unit_sphere(neus_folder):
    center, radius = _working_sphere(import_neus(neus_folder))
    assert np.linalg.norm(center) + radius < 1.0 and radius == pytest.approx(RADIUS / 0.5)


def test_neus_masks_and_normals_match_the_sphere(neus_folder):
    scene = import_neus(neus_folder)
    for view, truth in zip(scene.views, _true_masks(scene)):
        np.testing.assert_array_equal(view.mask, truth)
    center, radius = _working_sphere(scene)
    for view in scene.views:
        expected = _hits(view.K, view.world_to_camera, center, radius, 0.5)[1]  # working space
        assert np.abs(view.normal[view.mask] - expected[view.mask]).max() < 1e-5
        assert not view.normal[~view.mask].any()
    image = scene.views[3].image
    assert image.shape == (HEIGHT, WIDTH, 3) and (image[~scene.views[3].mask] == 0).all()


def test_load_scene_reads_a_neus_folder(neus_folder):
    scene = load_scene(neus_folder)
    assert len(scene.views) == VIEWS and scene.modalities() == {"normal", "mask", "image"}


def test_neus_missing_file_is_named(neus_copy):
    (neus_copy / "mask" / "03.png").unlink()
    with pytest.raises(InputError, match=r"mask[/\\]03\.png: missing mask file for camera 3"):
        import_neus(neus_copy)


def test_neus_missing_cameras_is_named(neus_copy):
    (neus_copy / "cameras_sphere.npz").unlink()
    with pytest.raises(InputError, match="neus: no cameras_sphere.npz here"):
        import_neus(neus_copy)


def test_neus_corrupt_npz_is_named(neus_copy):
    (neus_copy / "cameras_sphere.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(InputError, match=r"cameras_sphere\.npz: cannot read"):
        import_neus(neus_copy)


def test_neus_fewer_cameras_than_images_is_named(neus_copy):
    with np.load(neus_copy / "cameras_sphere.npz") as data:
        arrays = {k: data[k] for k in data.files if not k.endswith(f"_{VIEWS - 1}")}
    np.savez(neus_copy / "cameras_sphere.npz", **arrays)
    with pytest.raises(InputError, match=rf"cameras_sphere\.npz: no world_mat_{VIEWS - 1} for view {VIEWS - 1}"):
        import_neus(neus_copy)


def test_neus_corrupt_normal_map_is_named(neus_copy):
    (neus_copy / "normal_world_space_GT" / "05.exr").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"05\.exr: cannot read EXR"):
        import_neus(neus_copy)


def test_neus_image_of_another_size_is_named(neus_copy):
    write_png(neus_copy / "image" / "02.png", np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    with pytest.raises(InputError, match=rf"02\.png: image is {WIDTH + 2}x{HEIGHT}"):
        import_neus(neus_copy)


# ---------------------------------------------------------------------- Middlebury layout
def _par_line(name: str, K: np.ndarray, W2C: np.ndarray) -> str:
    values = np.r_[K.reshape(-1), W2C[:3, :3].reshape(-1), W2C[:3, 3]]
    return name + " " + " ".join(f"{x:.17g}" for x in values)


def _write_middlebury(root: Path) -> Path:
    """A Middlebury sequence: synth_par.txt (count, then 'name k11..k33 r11..r33 t1 t2 t3' per
    image) and the images it names, a shaded sphere on black."""
    root.mkdir(parents=True)
    lines = [str(VIEWS)]
    for i, (K, W2C) in enumerate(_cameras()):
        name = f"synth{i + 1:04d}.png"
        write_png(root / name, _shaded(*_hits(K, W2C, CENTER, RADIUS, 0.0)))
        lines.append(_par_line(name, K, W2C))
    (root / "synth_par.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def middlebury_folder(tmp_path_factory) -> Path:
    return _write_middlebury(tmp_path_factory.mktemp("middlebury") / "synthRing")


@pytest.fixture(scope="module")
def middlebury_scene(middlebury_folder) -> Scene:
    return import_middlebury(middlebury_folder)


@pytest.fixture()
def middlebury_copy(middlebury_folder, tmp_path) -> Path:
    return Path(shutil.copytree(middlebury_folder, tmp_path / "mb"))


def test_middlebury_cameras_round_trip(middlebury_scene):
    assert middlebury_scene.modalities() == {"mask", "image"}
    assert [v.name for v in middlebury_scene.views] == [f"synth{i + 1:04d}" for i in range(VIEWS)]
    _assert_cameras_round_trip(middlebury_scene)


def test_middlebury_object_inside_the_unit_sphere(middlebury_scene):
    """The visual hull's bounding sphere goes to radius 0.9: the sphere, inside its hull, lies
    inside the unit sphere and fills most of it."""
    center, radius = _working_sphere(middlebury_scene)
    assert np.linalg.norm(center) + radius < 0.9 + 1e-6
    assert radius > 0.7 and np.linalg.norm(center) < 0.1


def test_middlebury_masks_and_images_match_the_sphere(middlebury_scene):
    """The silhouettes are the sphere's less a few boundary pixels (the opening with a 5 x 5 square
    that drops specks: up to 8 of 550-710 pixels here), never more; the images are the files' pixels."""
    for i, (view, truth) in enumerate(zip(middlebury_scene.views, _true_masks(middlebury_scene))):
        missing = truth & ~view.mask
        assert not (view.mask & ~truth).any() and missing.sum() < 0.05 * truth.sum(), view.name
        assert not (missing & ndimage.binary_erosion(truth, iterations=3)).any(), view.name
        written = _shaded(*_hits(*_cameras()[i], CENTER, RADIUS, 0.0))
        np.testing.assert_array_equal(np.round(view.image * 255).astype(np.uint8), written)


def test_middlebury_missing_image_is_named(middlebury_copy):
    (middlebury_copy / "synth0004.png").unlink()
    with pytest.raises(InputError, match=r"synth0004\.png: no such file"):
        import_middlebury(middlebury_copy)


def test_middlebury_corrupt_camera_file_is_named(middlebury_copy):
    (middlebury_copy / "synth_par.txt").write_bytes(b"\x00\xff garbage")
    with pytest.raises(InputError, match=r"synth_par\.txt: not a Middlebury camera file"):
        import_middlebury(middlebury_copy)


def test_middlebury_count_mismatch_is_named(middlebury_copy):
    par = middlebury_copy / "synth_par.txt"
    par.write_text("\n".join(par.read_text().splitlines()[:-1]) + "\n")  # one camera line short
    with pytest.raises(InputError, match=rf"synth_par\.txt: declares {VIEWS} views but has {VIEWS - 1}"):
        import_middlebury(middlebury_copy)


def test_middlebury_short_camera_line_is_named(middlebury_copy):
    par = middlebury_copy / "synth_par.txt"
    lines = par.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1])  # t3 missing
    par.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"synth_par\.txt: line 4: expected 'name k11"):
        import_middlebury(middlebury_copy)
