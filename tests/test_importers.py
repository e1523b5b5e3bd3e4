"""Importers on real data: the NeuS layout (SuperNormal) and Middlebury multi-view sequences."""

import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from zerolevel.errors import InputError
from zerolevel.importers import import_middlebury, import_neus, load_scene
from zerolevel.scene import Scene, read_scene

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEUS = DATA / "neus_layout_spot"
MIDDLEBURY = DATA / "middlebury_multiview"


# ---------------------------------------------------------------------- NeuS importer (real data)
@pytest.fixture(scope="module")
def neus_scene() -> Scene:
    if not (NEUS / "cameras_sphere.npz").is_file():
        pytest.skip("shared NeuS-layout data not present")
    return import_neus(NEUS)


@pytest.fixture(scope="module")
def neus_mesh(neus_scene):
    from zerolevel.geometry.mesh import load_mesh, transform_mesh

    return transform_mesh(load_mesh(NEUS / "mesh_Gt.ply", process=False), neus_scene.from_world)


def _cast(mesh, origins, directions):
    """(hit mask (N,), hit ray indices, face indices) of the first hits."""
    _, ray, tri = mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    hit = np.zeros(len(origins), bool)
    hit[ray] = True
    return hit, ray, tri


def test_neus_import_basics(neus_scene, neus_mesh):
    assert len(neus_scene.views) == 12 and neus_scene.modalities() == {"normal", "mask"}
    assert {(v.width, v.height) for v in neus_scene.views} == {(160, 128)}
    assert np.linalg.norm(neus_mesh.vertices, axis=1).max() < 1.0
    for v in neus_scene.views:
        length = np.linalg.norm(v.normal, axis=-1)
        assert np.abs(length[v.mask] - 1).max() < 1e-5 and not length[~v.mask].any()


def test_neus_pixel_convention_reproduces_masks(neus_scene, neus_mesh):
    """Rays through our pixel centres (j + 0.5, i + 0.5) hit the GT mesh exactly on the masks;
    without the +0.5 shift of cx, cy the silhouettes are off by half a pixel."""
    cams = neus_scene.cameras(dtype=torch.float64)
    for shift, expected in ((0.0, lambda iou: iou > 0.999), (-0.5, lambda iou: iou < 0.98)):
        uv = cams.pixel_centers().reshape(-1, 2) + shift
        origins, dirs = cams.rays(uv)
        for i in (0, 5, 11):
            view = neus_scene.views[i]
            hit, _, _ = _cast(neus_mesh, origins[i].numpy(), dirs[i].numpy())
            hit = hit.reshape(view.height, view.width)
            iou = (hit & view.mask).sum() / (hit | view.mask).sum()
            assert expected(iou), (shift, i, iou)


def test_neus_vertices_project_into_masks(neus_scene, neus_mesh):
    cams = neus_scene.cameras(dtype=torch.float64)
    uv, depth = cams.project(torch.as_tensor(neus_mesh.vertices))
    assert (depth > 0).all()
    from scipy import ndimage

    for i, view in enumerate(neus_scene.views):
        j, k = uv[i, :, 0].floor().long().numpy(), uv[i, :, 1].floor().long().numpy()
        assert (j >= 0).all() and (j < view.width).all() and (k >= 0).all() and (k < view.height).all()
        # silhouette vertices may sit in a pixel whose centre is just outside: allow one pixel
        near = ndimage.binary_dilation(view.mask)
        assert near[k, j].mean() > 0.999
        assert view.mask[k, j].mean() > 0.9


def test_neus_normals_match_mesh(neus_scene, neus_mesh):
    cams = neus_scene.cameras(dtype=torch.float64)
    origins, dirs = cams.image_rays()
    for i in (2, 7):
        view = neus_scene.views[i]
        o, d = origins[i].reshape(-1, 3).numpy(), dirs[i].reshape(-1, 3).numpy()
        n = view.normal.reshape(-1, 3)
        fg = view.mask.reshape(-1)
        assert ((n * d).sum(-1)[fg] < 0).mean() > 0.99  # normals face the camera
        _, ray, tri = _cast(neus_mesh, o, d)
        cos = (n[ray] * neus_mesh.face_normals[tri]).sum(-1)
        assert np.median(cos) > 0.999 and (cos > 0.95).mean() > 0.98


def test_neus_folder_reads_directly_and_round_trips(neus_scene, tmp_path):
    direct = load_scene(NEUS)
    assert len(direct.views) == 12
    neus_scene.write(tmp_path / "s")
    back = read_scene(tmp_path / "s")
    np.testing.assert_allclose(back.to_world, neus_scene.to_world)
    for a, b in zip(neus_scene.views, back.views):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert np.abs(a.normal - b.normal).max() < 1e-4


def test_neus_errors_name_the_file(tmp_path):
    if not NEUS.is_dir():
        pytest.skip("shared NeuS-layout data not present")
    copy = tmp_path / "neus"
    shutil.copytree(NEUS, copy)
    (copy / "mask" / "03.png").unlink()
    with pytest.raises(InputError, match="03.png: missing mask file for camera 3"):
        import_neus(copy)
    shutil.copy(NEUS / "mask" / "03.png", copy / "mask" / "03.png")
    (copy / "normal_world_space_GT" / "04.exr").write_bytes(zlib.compress(b"junk"))
    with pytest.raises(InputError, match="04.exr"):
        import_neus(copy)


# ---------------------------------------------------------------------- Middlebury importer (real data)
# Published tight bounding boxes (README.txt of each sequence), in Middlebury units.
MIDDLEBURY_BOXES = {"templeSparseRing": ([-0.073568, 0.021728, -0.012445], [0.028855, 0.181892, 0.062736]),
                    "dinoSparseRing": ([-0.061897, -0.018874, -0.057845], [0.010897, 0.068227, 0.015495])}


@pytest.fixture(scope="module", params=sorted(MIDDLEBURY_BOXES))
def middlebury(request):
    src = MIDDLEBURY / request.param
    if not src.is_dir():
        pytest.skip("shared Middlebury data not present")
    return request.param, import_middlebury(src)


def test_middlebury_import(middlebury):
    name, scene = middlebury
    assert len(scene.views) == 16 and scene.modalities() == {"mask", "image"}
    assert {(v.width, v.height) for v in scene.views} == {(640, 480)}
    assert all(v.image.shape == (480, 640, 3) for v in scene.views)
    fill = np.array([v.mask.mean() for v in scene.views])
    assert (fill > 0.1).all() and (fill < 0.6).all(), fill
    cams = scene.cameras(dtype=torch.float64)
    uv, depth = cams.project(torch.zeros(1, 3, dtype=torch.float64))
    assert (depth > 0).all()
    for i, view in enumerate(scene.views):  # cameras look at the normalised hull centre
        u, v = uv[i, 0].tolist()
        assert 0 <= u < 640 and 0 <= v < 480


def test_middlebury_normalisation_matches_published_box(middlebury):
    """The centre of the published bounding box lands near the origin and inside every mask's
    bounding rectangle (not necessarily on the mask: the temple is see-through between its
    columns), and the object's extent is a sizeable part of the unit sphere."""
    name, scene = middlebury
    lo, hi = (np.array(x) for x in MIDDLEBURY_BOXES[name])
    center = (scene.from_world @ np.r_[(lo + hi) / 2, 1])[:3]
    half_extent = (hi - lo) / 2 / scene.to_world[0, 0]
    assert np.linalg.norm(center) < 0.35
    assert 0.25 < np.linalg.norm(half_extent) < 1.5
    points = torch.tensor(np.stack([center, np.zeros(3)]))  # box centre, hull centre
    uv, _ = scene.cameras(dtype=torch.float64).project(points)
    for i, view in enumerate(scene.views):
        rows, cols = np.nonzero(view.mask)
        for u, v in uv[i].tolist():
            assert cols.min() <= u <= cols.max() + 1 and rows.min() <= v <= rows.max() + 1, view.name
