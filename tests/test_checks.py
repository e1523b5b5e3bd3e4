"""Scene checks: a good rendered scene passes; each common convention mistake is named and diagnosed."""

import copy
import re

import numpy as np
import pytest

from zerolevel.data import example_mesh_path
from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import render_scene
from zerolevel.recon.checks import MIN_COVERAGE, OUTSIDE_SPHERE, WARN_COVERAGE, check_scene

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


def _shifted(scene, shift: int):
    """The scene with view 005's mask rolled `shift` pixels to the right and its normals dropped
    (the check is then about masks only)."""
    view = scene.views[5]
    view.mask = np.roll(view.mask, shift, axis=1)
    view.normal = None
    return scene


def _percent(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return int(found.group(1))


def test_shifted_mask_disagrees_with_the_others(scene):
    """20 px of a 64 px image: the hull of the other views covers under half of the mask (the
    error threshold is MIN_COVERAGE = 70%), and a fifth of it leaves the unit sphere's projection."""
    message = _error(_shifted(scene, 20))
    assert all(f"{i:03d}" not in message for i in range(5))
    hull = _percent(r"view 005: only (\d+)% of the mask is covered by the visual hull", message)
    assert hull < 100 * MIN_COVERAGE - 10
    outside = _percent(r"view 005: (\d+)% of the mask lies outside the projection of the unit sphere",
                       message)
    assert 100 * OUTSIDE_SPHERE < outside < 50


def test_slightly_shifted_mask_is_a_warning_naming_its_view(scene):
    """8 px: the shifted view is covered between the error and the warning thresholds; no other
    view is named, and nothing is raised."""
    warnings = check_scene(_shifted(scene, 8), "scene")
    assert len(warnings) == 1 and warnings[0].startswith("view 005: ")
    assert 100 * MIN_COVERAGE <= _percent(r"only (\d+)% covered", warnings[0]) < 100 * WARN_COVERAGE


@pytest.mark.parametrize("shift", [1, 3])
def test_a_mask_a_few_pixels_off_passes(scene, shift):
    """Masks drawn a few pixels off (antialiasing, rounding) are not a convention error."""
    assert check_scene(_shifted(scene, shift), "scene") == []


def test_full_image_mask_is_named(scene):
    view = scene.views[0]
    view.mask = np.ones_like(view.mask)
    view.normal = None
    message = _error(scene)
    assert "view 000:" in message
    assert "unit sphere" in message or "visual hull" in message
    assert all(f"{i:03d}" not in message for i in range(1, 6))


def test_fewer_than_three_masks_skip_the_hull_check(scene):
    """A 12 px shift that three views judge (hull warnings) passes unjudged with two."""
    scene.views[1].mask = np.roll(scene.views[1].mask, 12, axis=1)
    scene.views[1].normal = None
    three, two = copy.deepcopy(scene), scene
    three.views, two.views = scene.views[:3], scene.views[:2]
    assert any("visual hull" in w for w in check_scene(three, "scene"))
    assert check_scene(two, "scene") == []
