"""Scene checks: a good rendered scene passes; each common convention mistake is named and diagnosed."""

import copy
import time

import numpy as np
import pytest

from zerolevel.data import example_mesh_path
from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import render_scene
from zerolevel.recon.checks import check_scene

OPENGL = np.array([1.0, -1.0, -1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def good_scene():
    return render_scene(load_mesh(example_mesh_path()), views=6, resolution=64, progress=False)


@pytest.fixture()
def scene(good_scene):
    return copy.deepcopy(good_scene)


def _error(scene) -> str:
    with pytest.raises(InputError) as info:
        check_scene(scene, "scene")
    message = str(info.value)
    assert "\n" not in message and message.startswith("scene: ")
    return message


def test_good_scene_passes(good_scene):
    assert check_scene(good_scene, "scene") == []


def test_camera_space_normals_are_diagnosed(scene):
    view = scene.views[2]
    view.normal = (view.normal @ view.R.T.astype(np.float32)).astype(np.float32)  # n_cam = R n_world
    message = _error(scene)
    assert "view 002:" in message and "camera-space normals declared as world-space" in message
    assert "001" not in message and "003" not in message


def test_opengl_normals_are_diagnosed(scene):
    for view in (scene.views[1], scene.views[4]):
        R = view.R.astype(np.float32)
        view.normal = (((view.normal @ R.T) * OPENGL) @ R).astype(np.float32)  # R^T F R n
    message = _error(scene)
    assert "views 001, 004:" in message and "OpenGL" in message
    assert "camera-space" not in message


def test_negated_normals_face_away(scene):
    scene.views[3].normal = -scene.views[3].normal
    message = _error(scene)
    assert "view 003:" in message and "face away from the camera" in message
    assert "OpenGL" not in message and "camera-space" not in message


@pytest.mark.parametrize("shift", [20])
def test_shifted_mask_disagrees_with_the_others(scene, shift):
    view = scene.views[5]
    view.mask = np.roll(view.mask, shift, axis=1)
    view.normal = None  # keep the test about masks only
    message = _error(scene)
    assert "view 005:" in message and "visual hull" in message
    assert all(f"{i:03d}" not in message for i in range(5))


def test_full_image_mask_is_named(scene):
    view = scene.views[0]
    view.mask = np.ones_like(view.mask)
    view.normal = None
    message = _error(scene)
    assert "view 000:" in message
    assert "unit sphere" in message or "visual hull" in message
    assert all(f"{i:03d}" not in message for i in range(1, 6))


def test_fewer_than_three_masks_skip_the_hull_check(scene):
    scene.views = scene.views[:2]
    scene.views[1].mask = np.roll(scene.views[1].mask, 3, axis=1)
    scene.views[1].normal = None
    check_scene(scene, "scene")


def test_checks_are_fast():
    scene = render_scene(load_mesh(example_mesh_path()), views=32, resolution=128, progress=False)
    start = time.perf_counter()
    check_scene(scene, "scene")
    assert time.perf_counter() - start < 1.0
