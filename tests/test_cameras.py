"""Cameras: projection round trips, P = K[R|t] decomposition, rays and constructors."""

import math

import numpy as np
import pytest
import torch

from zerolevel.cameras import Cameras, check_sees
from zerolevel.errors import InputError


@pytest.fixture
def cams() -> Cameras:
    return Cameras.sphere(7, distance=2.5, fov_deg=40, width=80, height=60)


def test_project_unproject_round_trip(cams):
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(len(cams), 50, 2, generator=g) * torch.tensor([80.0, 60.0])
    depth = 1 + 2 * torch.rand(len(cams), 50, generator=g)
    points = cams.unproject(uv, depth)
    uv2, depth2 = cams.project(points)
    assert torch.allclose(uv2, uv, atol=1e-3)
    assert torch.allclose(depth2, depth, atol=1e-5)


def test_projection_matrix_decomposition_round_trip(cams):
    P = cams.projection_matrix().double()
    for scale in (1.0, -3.7):  # P is defined up to scale, sign included
        back = Cameras.from_projection(P * scale, cams.width, cams.height, dtype=torch.float64)
        assert torch.allclose(back.K, cams.K.double(), atol=1e-4)
        assert torch.allclose(back.world_to_camera, cams.world_to_camera.double(), atol=1e-5)
        R = back.R
        assert torch.allclose(torch.det(R), torch.ones(len(cams), dtype=torch.float64))


def test_decomposition_of_skewed_intrinsics():
    K = np.array([[500.0, 2.0, 310.0], [0.0, 480.0, 250.0], [0.0, 0.0, 1.0]])
    angle = 0.3
    R = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    t = np.array([0.1, -0.2, 3.0])
    P = K @ np.hstack([R, t[:, None]])
    cam = Cameras.from_projection(P, 640, 480, dtype=torch.float64)
    assert np.allclose(cam.K[0].numpy(), K, atol=1e-8)
    assert np.allclose(cam.R[0].numpy(), R, atol=1e-10)
    assert np.allclose(cam.t[0].numpy(), t, atol=1e-10)


def test_rays_are_unit_and_hit_their_pixels(cams):
    origins, dirs = cams.image_rays()
    assert origins.shape == (7, 60, 80, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(7, 60, 80), atol=1e-5)
    points = (origins + 2.0 * dirs).reshape(7, -1, 3)
    uv, _ = cams.project(points)
    assert torch.allclose(uv.reshape(7, 60, 80, 2), cams.pixel_centers().expand(7, 60, 80, 2), atol=1e-3)


def test_camera_centres_and_look_at(cams):
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((7,), 2.5), atol=1e-5)
    # the origin projects to the principal point of every look-at camera
    uv, depth = cams.project(torch.zeros(1, 3))
    assert torch.allclose(uv[:, 0], torch.tensor([40.0, 30.0]).expand(7, 2), atol=1e-3)
    assert torch.allclose(depth[:, 0], torch.full((7,), 2.5), atol=1e-5)
    # world up appears upwards (towards smaller v) unless the camera looks along it
    uv_up, _ = cams.project(torch.tensor([[0.0, 0.3, 0.0]]))
    sideways = cams.forward[:, 1].abs() < 0.9
    assert (uv_up[sideways, 0, 1] < 30.0).all()


def test_ring_matches_softras_shapenet_views():
    ring = Cameras.ring()
    assert len(ring) == 24 and (ring.width, ring.height) == (64, 64)
    assert torch.allclose(ring.centers.norm(dim=-1), torch.full((24,), 2.732), atol=1e-5)
    elevation = torch.rad2deg(torch.asin(ring.centers[:, 1] / 2.732))
    assert torch.allclose(elevation, torch.full((24,), 30.0), atol=1e-3)
    azimuth = torch.rad2deg(torch.atan2(ring.centers[:, 0], -ring.centers[:, 2]))
    steps = torch.remainder(azimuth.diff(), 360)
    assert torch.allclose(steps, torch.full((23,), 15.0), atol=1e-3)


def test_sphere_cameras_are_spread(cams):
    many = Cameras.sphere(64)
    c = many.centers / many.centers.norm(dim=-1, keepdim=True)
    assert c.mean(dim=0).norm() < 0.05  # near-uniform: centroid near the origin
    nearest = (c @ c.T - 2 * torch.eye(64)).max(dim=1).values
    assert nearest.max() < math.cos(math.radians(15))  # every camera has neighbours but none coincide


def test_patch_rays_match_pixel_rays(cams):
    top_left = torch.tensor([[3, 4], [70, 50]])
    o, d = cams.patch_rays(top_left, 3)
    assert d.shape == (7, 2, 3, 3, 3)
    _, all_d = cams.image_rays()
    assert torch.allclose(d[:, 0, 1, 2], all_d[:, 5, 5], atol=1e-6)  # row 4+1, column 3+2
    assert torch.allclose(d[:, 1, 2, 0], all_d[:, 52, 70], atol=1e-6)


def test_batched_subsets_and_cat(cams):
    both = Cameras.cat([cams[:3], cams[3:]])
    assert torch.equal(both.K, cams.K) and torch.equal(both.world_to_camera, cams.world_to_camera)
    assert len(cams[2]) == 1


def test_check_sees_names_blind_cameras():
    cams = Cameras.look_at(torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0]]), target=torch.tensor(
        [[0.0, 0.0, 0.0], [0.0, 0.0, -6.0]]))
    with pytest.raises(InputError, match=r"camera\(s\) \[1\]"):
        check_sees(cams, torch.zeros(1, 3), "scene.json")


def test_downscaled_cameras_project_to_the_smaller_pixels(cams):
    """Pixel (i, j) of the factor-2 image covers pixels 2 (i, j) ... 2 (i, j) + 1: uv halves, depth and
    pose stay; a factor that does not divide the image size is refused."""
    points = torch.rand(50, 3, dtype=cams.dtype) - 0.5
    uv, depth = cams.project(points)
    small = cams.downscaled(2)
    uv_small, depth_small = small.project(points)
    assert (small.width, small.height) == (cams.width // 2, cams.height // 2)
    torch.testing.assert_close(uv_small, uv / 2)
    torch.testing.assert_close(depth_small, depth)
    with pytest.raises(ValueError, match="cannot downscale"):
        cams.downscaled(7)
