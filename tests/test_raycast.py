"""Ground-truth ray casting: analytic sphere and cube, anti-aliased masks, Lambertian shading,
open / multi-part meshes, and Embree against trimesh's pure-Python reference caster."""

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from zerolevel.cameras import Cameras
from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
from zerolevel.render.raycast import DirectionalLight, MeshRayCaster, render_mesh

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CENTER = np.array([0.1, -0.05, 0.2])
RADIUS = 0.7


@pytest.fixture(scope="module")
def sphere() -> MeshRayCaster:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    mesh.apply_translation(CENTER)
    return MeshRayCaster(mesh)


@pytest.fixture(scope="module")
def sphere_gap(sphere) -> float:
    """Largest radial gap between the inscribed polyhedron and the sphere: RADIUS - inradius."""
    tri = sphere.vertices[sphere.faces]
    plane_dist = np.einsum("ij,ij->i", tri[:, 0] - CENTER, sphere.face_normals)
    return RADIUS - plane_dist.min()


def _sphere_cameras(n: int = 3, size: int = 48) -> Cameras:
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return Cameras.look_at(CENTER + 2.5 * dirs, target=CENTER + 0.1 * rng.normal(size=(n, 3)),
                           fov_deg=40, width=size, height=size)


def _analytic_sphere(cameras: Cameras) -> dict[str, np.ndarray]:
    """Per pixel: ray distance to the centre, camera-z depth, normal and cosine of incidence."""
    o, d = cameras.to(dtype=torch.float64).image_rays()
    o, d = o.numpy(), d.numpy()
    oc = o - CENTER
    b = np.einsum("...j,...j->...", d, oc)
    dist = np.sqrt(np.maximum(np.einsum("...j,...j->...", oc, oc) - b * b, 0))
    t = -b - np.sqrt(np.maximum(RADIUS**2 - dist**2, 0))
    p = o + t[..., None] * d
    R = cameras.R.double().numpy()
    tc = cameras.t.double().numpy()
    z = np.einsum("bhwj,bj->bhw", p, R[:, 2]) + tc[:, None, None, 2]
    n = (p - CENTER) / RADIUS
    cos = -np.einsum("...j,...j->...", n, d)
    return {"dist": dist, "depth": z, "normal": n, "cos": cos, "dirs": d}


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.einsum("...j,...j->...", a, b) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# --------------------------------------------------------------------------- analytic sphere
def test_sphere_mask_depth_normals(sphere, sphere_gap):
    cams = _sphere_cameras()
    ref = _analytic_sphere(cams)
    out = render_mesh(sphere, cams, smooth=True)
    flat = render_mesh(sphere, cams, smooth=False)
    assert out["mask"].shape == (3, 48, 48) and out["normal"].shape == (3, 48, 48, 3)
    assert all(v.dtype == np.float32 for v in out.values())

    # The polyhedron lies between its in-sphere and the sphere: both silhouette tests are exact.
    inradius = RADIUS - sphere_gap
    assert np.all(out["mask"][ref["dist"] > RADIUS * (1 + 1e-6)] == 0)
    assert np.all(out["mask"][ref["dist"] < inradius * (1 - 1e-6)] == 1)
    assert set(np.unique(out["mask"])) <= {0.0, 1.0}

    inside = out["mask"] > 0
    assert np.all(out["depth"][~inside] == 0) and np.all(out["normal"][~inside] == 0)
    assert np.all(out["image"][~inside] == 0)
    assert np.allclose(np.linalg.norm(out["normal"][inside], axis=-1), 1, atol=1e-5)

    # Depth: the facet lies at most `gap` inside the sphere, i.e. gap / cos along the ray.
    ok = inside & (ref["dist"] < 0.95 * RADIUS)
    err = np.abs(out["depth"][ok] - ref["depth"][ok])
    assert np.all(err <= sphere_gap / ref["cos"][ok] + 1e-5), err.max()
    assert np.all(out["depth"][ok] >= ref["depth"][ok] - 1e-5)  # never in front of the sphere

    assert _angle_deg(out["normal"][ok], ref["normal"][ok]).max() < 1.0
    assert _angle_deg(flat["normal"][ok], ref["normal"][ok]).max() < 2.0


def test_intersect_distance_matches_barycentric_point(sphere):
    rng = np.random.default_rng(1)
    origins = CENTER + 2.0 * rng.normal(size=(200, 3))
    directions = CENTER + 0.3 * rng.normal(size=(200, 3)) - origins
    hits = sphere.intersect(origins, directions)
    assert hits.hit.mean() > 0.5
    h = hits.hit
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    p_bary = np.einsum("mk,mkj->mj", hits.barycentric[h], sphere.vertices[sphere.faces[hits.face[h]]])
    p_ray = origins[h] + hits.distance[h, None] * unit[h]
    assert np.allclose(p_bary, p_ray, atol=1e-5)
    assert np.all(hits.barycentric[h] >= -1e-6) and np.allclose(hits.barycentric[h].sum(1), 1)
    assert np.all(np.isinf(hits.distance[~h])) and np.all(hits.face[~h] == -1)


def test_render_uses_the_cameras_rays(sphere):
    """Non-square image, off-centre principal point: render agrees with `Cameras.image_rays`."""
    base = _sphere_cameras(2, 8)
    K = torch.tensor([[45.0, 0.0, 17.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    cams = Cameras(K, base.world_to_camera, width=40, height=28)
    out = render_mesh(sphere, cams, smooth=False)
    o, d = cams.image_rays()
    hits = sphere.intersect(o.reshape(-1, 3).numpy(), d.reshape(-1, 3).numpy())
    assert np.array_equal(out["mask"].reshape(-1) > 0, hits.hit)
    points = o.reshape(-1, 3).double().numpy() + hits.distance[:, None] * d.reshape(-1, 3).double().numpy()
    z = np.einsum("bnj,bj->bn", points.reshape(2, -1, 3), cams.R[:, 2].double().numpy())
    z = (z + cams.t[:, None, 2].double().numpy()).reshape(-1)
    assert np.allclose(out["depth"].reshape(-1)[hits.hit], z[hits.hit], atol=1e-5)
    assert np.allclose(out["normal"].reshape(-1, 3)[hits.hit],
                       -np.sign(np.einsum("ij,ij->i", sphere.face_normals[hits.face[hits.hit]],
                                          d.reshape(-1, 3).numpy()[hits.hit]))[:, None]
                       * sphere.face_normals[hits.face[hits.hit]], atol=1e-6)


# --------------------------------------------------------------------------- cube
def test_cube_face_normals_and_depth():
    box = MeshRayCaster(trimesh.creation.box(extents=(1.0, 1.0, 1.0)))
    front = Cameras.look_at([0.0, 0.0, 3.0], fov_deg=30, width=32, height=32)
    out = render_mesh(box, front, smooth=False)
    inside = out["mask"][0] > 0
    # The front face is the square |x|, |y| <= 0.5 at camera z = 2.5: f * 0.5 / 2.5 pixels half-width.
    half = front.K[0, 0, 0].item() * 0.5 / 2.5
    c = (np.arange(32) + 0.5) - 16
    square = (np.abs(c)[:, None] < half - 0.01) & (np.abs(c)[None, :] < half - 0.01)
    outside = (np.abs(c)[:, None] > half + 0.01) | (np.abs(c)[None, :] > half + 0.01)
    assert np.all(inside[square]) and not np.any(inside[outside])
    assert np.allclose(out["depth"][0][inside], 2.5, atol=1e-6)
    assert np.array_equal(out["normal"][0][inside], np.broadcast_to([0, 0, 1], (inside.sum(), 3)))

    # From anywhere, flat normals are exactly axis-aligned.
    many = render_mesh(box, Cameras.sphere(6, distance=3.0, width=24, height=24), smooth=False)
    n = many["normal"][many["mask"] > 0]
    assert np.allclose(np.sort(np.abs(n), axis=1), [0, 0, 1], atol=1e-6)


# --------------------------------------------------------------------------- supersampling
def test_supersampled_mask_area(sphere, sphere_gap):
    D, size = 3.0, 40
    cams = Cameras.look_at(CENTER + [0.0, 0.0, D], target=CENTER, fov_deg=40, width=size, height=size)
    f = cams.K[0, 0, 0].item()

    def disc_area(r: float) -> float:  # perspective silhouette of a sphere on the optical axis
        return np.pi * (f * np.tan(np.arcsin(r / D))) ** 2

    lo, hi = disc_area(RADIUS - sphere_gap), disc_area(RADIUS)
    masks = {s: render_mesh(sphere, cams, supersample=s)["mask"][0] for s in (1, 2, 4)}
    m4 = masks[4]
    edge = (m4 > 0) & (m4 < 1)
    assert edge.sum() > 20  # fractional coverage along the silhouette
    assert set(np.unique(m4 * 16).round(5)) <= set(range(17))  # multiples of 1/16
    for s in (2, 4):  # inner pixels stay 1, outer 0
        assert np.all(masks[s][masks[1] == 1].min() > 0) and masks[s].max() == 1
    err = {s: max(lo - m.sum(), m.sum() - hi, 0.0) for s, m in masks.items()}
    assert err[4] < 0.002 * hi, err
    assert err[4] <= err[1] + 1e-6, err


def test_supersampled_depth_and_normals(sphere):
    cams = _sphere_cameras(2, 32)
    ref = _analytic_sphere(cams)
    one = render_mesh(sphere, cams)
    for s in (2, 3):
        out = render_mesh(sphere, cams, supersample=s)
        inside = out["mask"] > 0
        assert np.all((out["depth"] > 0) == inside)
        assert np.allclose(np.linalg.norm(out["normal"][inside], axis=-1), 1, atol=1e-5)
        # Depth is from the pixel-centre ray wherever that ray hits: identical to supersample=1.
        assert np.array_equal(out["depth"][one["mask"] > 0], one["depth"][one["mask"] > 0])
        # Away from the silhouette (where the normal turns fast within a pixel) the pixel-mean
        # normal is close to the analytic one at the pixel centre.
        full = (out["mask"] == 1) & (ref["dist"] < 0.9 * RADIUS)
        assert _angle_deg(out["normal"][full], ref["normal"][full]).max() < 1.0
        # Anti-aliased image = mean over sub-rays on a black background: darker edges.
        assert np.all(out["image"][~inside] == 0)
        assert np.all(out["image"] <= out["mask"] + 1e-6)


@pytest.mark.parametrize("supersample", [1, 2])
def test_chunking_does_not_change_the_result(sphere, supersample):
    base = _sphere_cameras(3, 8)
    cams = Cameras(base.K, base.world_to_camera, width=24, height=20)
    rays_per_pixel = 1 if supersample == 1 else 5
    whole = sphere.render(cams, supersample=supersample, max_rays=10**9)
    for max_rays in (24 * rays_per_pixel * 3, 24 * 20 * rays_per_pixel * 2):  # 3 rows; 2 views
        part = sphere.render(cams, supersample=supersample, max_rays=max_rays)
        for key in whole:
            assert np.array_equal(whole[key], part[key]), (key, max_rays)


# --------------------------------------------------------------------------- shading
def test_lambertian_single_light(sphere):
    cams = _sphere_cameras(2, 40)
    ref = _analytic_sphere(cams)
    l_dir = np.array([0.3, 0.5, 0.8])
    light = DirectionalLight(direction=l_dir, intensity=0.8)
    l_unit = l_dir / np.linalg.norm(l_dir)
    out = render_mesh(sphere, cams, lights=[light], ambient=0.1, albedo=0.9)
    inside = out["mask"] > 0

    def expected(n):
        return np.clip(0.9 * (0.1 + 0.8 * np.maximum(n @ l_unit, 0)), 0, 1)

    assert np.allclose(out["image"][inside], expected(out["normal"][inside]), atol=1e-5)
    ok = inside & (ref["dist"] < 0.95 * RADIUS)
    assert np.allclose(out["image"][ok], expected(ref["normal"][ok]), atol=0.02)
    assert np.all(out["image"][~inside] == 0)
    assert (out["image"][inside] < 0.9 * 0.1 + 1e-6).any()  # some pixels face away: ambient only


def test_headlight_and_per_view_lights(sphere):
    cams = _sphere_cameras(2, 24)
    out = render_mesh(sphere, cams, albedo=0.5, ambient=0.0)  # headlight: light from the camera
    fwd = cams.forward.double().numpy()
    for b in range(2):
        m = out["mask"][b] > 0
        assert np.allclose(out["image"][b][m], 0.5 * np.maximum(out["normal"][b][m] @ -fwd[b], 0),
                           atol=1e-5)
    lights = [[DirectionalLight((1, 0, 0))],
              [DirectionalLight((0, 1, 0), 0.5), DirectionalLight((0, 0, -1), 0.3)]]
    per_view = render_mesh(sphere, cams, lights=lights)
    for b in range(2):
        single = render_mesh(sphere, cams[b], lights=lights[b])
        assert np.array_equal(per_view["image"][b], single["image"][0])
    mixed = render_mesh(sphere, cams, lights=[None, DirectionalLight((0, 0, 1))])
    assert np.array_equal(mixed["image"][0], render_mesh(sphere, cams[0])["image"][0])
    with pytest.raises(ValueError, match="per-view lights"):
        render_mesh(sphere, cams, lights=[None, None, None])


# --------------------------------------------------------------------------- open / multi-part
def _open_two_part_mesh() -> trimesh.Trimesh:
    """An open hemisphere (one face flipped) plus a separate small box."""
    hemi = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    hemi.update_faces(hemi.triangles_center[:, 2] > 0)
    hemi.faces[0] = hemi.faces[0, ::-1]  # inconsistent winding on purpose
    box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    box.apply_translation([0.0, 0.0, -0.5])
    return trimesh.util.concatenate([hemi, box])


def _check_faces_camera(mesh: trimesh.Trimesh, cams: Cameras) -> None:
    caster = MeshRayCaster(mesh)
    for smooth in (True, False):
        out = render_mesh(caster, cams, smooth=smooth)
        _, d = cams.image_rays()
        inside = out["mask"] > 0
        assert inside.any()
        dots = np.einsum("...j,...j->...", out["normal"], d.numpy())[inside]
        assert dots.max() <= 1e-5, dots.max()
        assert np.allclose(np.linalg.norm(out["normal"][inside], axis=-1), 1, atol=1e-5)
        assert np.all(out["depth"][inside] > 0)


def test_open_multipart_normals_face_camera():
    # Cameras all round, so both the outside and the inside (back faces) of the hemisphere are seen.
    _check_faces_camera(_open_two_part_mesh(), Cameras.sphere(6, distance=2.5, width=32, height=32))


def test_teapot_from_shared_data():
    path = SHARED_DATA / "meshes" / "teapot.obj"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    mesh = load_mesh(path)
    mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
    _check_faces_camera(mesh, Cameras.sphere(4, distance=3.0, width=48, height=48))


# --------------------------------------------------------------------------- reference caster
def test_embree_matches_python_reference():
    mesh = _open_two_part_mesh()
    cams = Cameras.sphere(2, distance=2.5, width=20, height=20)
    fast = render_mesh(MeshRayCaster(mesh, backend="embree"), cams, supersample=2)
    slow = render_mesh(MeshRayCaster(mesh, backend="trimesh"), cams, supersample=2)
    assert np.abs(fast["mask"] - slow["mask"]).sum() <= 0.25  # at most one sub-ray on an edge
    both = (fast["mask"] > 0) & (fast["mask"] == slow["mask"])
    assert np.allclose(fast["depth"][both], slow["depth"][both], atol=1e-5)
    assert np.allclose(fast["normal"][both], slow["normal"][both], atol=1e-4)
    assert np.allclose(fast["image"][both], slow["image"][both], atol=1e-4)


def test_bad_input():
    with pytest.raises(InputError):
        MeshRayCaster(trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), int)))
    box = MeshRayCaster(trimesh.creation.box())
    with pytest.raises(ValueError):
        box.render(Cameras.sphere(1, width=8, height=8), supersample=0)
    with pytest.raises(ValueError):
        MeshRayCaster(trimesh.creation.box(), backend="optix")


def test_seen_from_sees_the_near_side_of_a_sphere_and_not_what_is_inside():
    outer = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    inner = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    caster = MeshRayCaster(trimesh.util.concatenate([outer, inner]))
    directions = np.array([[0, 0, 1.0], [0, 0, -1.0], [0.6, 0, 0.8]])
    points = np.concatenate([0.5 * directions, 0.2 * directions])
    seen = caster.seen_from(points, np.array([[0.0, 0.0, 3.0]]))
    assert seen.tolist() == [True, False, True, False, False, False]
    seen = caster.seen_from(points, np.array([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0]]))
    assert seen.tolist() == [True, True, True, False, False, False]


def test_smooth_normals_keep_creases():
    """A cylinder's flat cap keeps its exact normal under smooth shading; the side stays smooth."""
    cylinder = trimesh.creation.cylinder(radius=0.5, height=0.6, sections=48)
    cameras = Cameras.look_at([[0.3, 2.2, 2.2]], up=(0, 0, 1), fov_deg=30, width=64, height=64)
    creased = render_mesh(cylinder, cameras)
    fan = render_mesh(cylinder, cameras, crease_deg=None)  # smooths across the rim: a domed cap
    normal, mask = creased["normal"][0], creased["mask"][0] > 0.999
    cap = mask & (normal[..., 2] > 0.5)
    side = mask & (np.abs(normal[..., 2]) < 0.5)
    assert cap.sum() > 200 and side.sum() > 200
    np.testing.assert_allclose(normal[cap], np.broadcast_to([0, 0, 1], normal[cap].shape), atol=1e-5)
    tilt = np.degrees(np.arccos(np.clip(fan["normal"][0][cap][:, 2], -1, 1)))
    assert tilt.max() > 20  # the fan cap's rim corners average the side's normals in
    # on the side, normals vary smoothly around the axis (not the 48 flat facets)
    radial = normal[side][:, :2] / np.linalg.norm(normal[side][:, :2], axis=1, keepdims=True)
    o, d = cameras.to(dtype=torch.float64).image_rays()
    hits = MeshRayCaster(cylinder).intersect(o.reshape(-1, 3).numpy(), d.reshape(-1, 3).numpy())
    points = (o.reshape(-1, 3).numpy() + hits.distance[:, None] * d.reshape(-1, 3).numpy())[side.ravel()]
    analytic = points[:, :2] / np.linalg.norm(points[:, :2], axis=1, keepdims=True)
    # flat facets 7.5 degrees wide would be off by up to 3.75 degrees
    assert np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", radial, analytic), -1, 1))).max() < 2.0
