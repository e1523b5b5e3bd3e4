"""The dataset folder: write + load round trip, images and voxels true to the meshes, splits, resume."""

import json

import numpy as np
import pytest
import trimesh

from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh
from zerolevel.learn.dataset import write as ds_write
from zerolevel.learn.dataset.folder import load_split
from zerolevel.learn.dataset.settings import VOXEL_BOUNDS, DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources, mesh_sources
from zerolevel.learn.dataset.splits import split_counts, split_objects
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.geometry.occupancy import grid_centres, solid_voxels, winding_number
from zerolevel.render.lights import DirectionalLight
from zerolevel.render.raycast import render_mesh

SETTINGS = DatasetSettings(views=4, resolution=32)
CATS = ["chair", "vase", "table"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three objects of three categories, 4 views at 32x32: one per split and category."""
    root = tmp_path_factory.mktemp("data") / "set"
    sources = generated_sources(CATS, 3, seed=0)
    summary = write_dataset(root, sources, SETTINGS, seed=0, progress=False, source_info={"kind": "test"})
    return root, sources, summary


def test_round_trip_shapes_and_dtypes(small):
    root, sources, summary = small
    info = json.loads((root / "dataset.json").read_text())
    assert info == summary.info
    assert info["format"] == "zerolevel-dataset" and info["version"] == 2
    assert (info["views"], info["resolution"], info["voxels"]) == (4, 32, 32)
    assert info["splits"] == {"train": 3, "val": 3, "test": 3}
    assert sorted(info["categories"]) == sorted(CATS)
    for name in ("train", "val", "test"):
        split = load_split(root, name)
        assert len(split) == 3
        assert isinstance(split.images, np.memmap) and split.images.shape == (3, 4, 32, 32, 4)
        assert split.images.dtype == np.uint8
        assert split.voxels.shape == (3, 32, 32, 32) and split.voxels.dtype == bool
        assert sorted(split.categories) == sorted(CATS)  # every category in every split
        assert len(split.cameras) == 4 and split.cameras.width == split.cameras.height == 32
        assert all(split.mesh_path(i).is_file() for i in range(len(split)))
        assert np.all(split.images[..., :3] <= split.images[..., 3:])  # RGB premultiplied by alpha
        assert np.all(split.images[..., 3].reshape(3, 4, -1).max(axis=-1) == 255)  # every view sees it


def test_alpha_matches_a_direct_render(small):
    root, _, _ = small
    split = load_split(root, "train")
    for i in range(len(split)):
        mesh = load_mesh(split.mesh_path(i))
        out = render_mesh(mesh, split.cameras, supersample=SETTINGS.supersample, crease_deg=None)
        np.testing.assert_array_equal(split.images[i][..., 3], np.rint(out["mask"] * 255).astype(np.uint8))


def test_rgb_is_headlight_plus_ambient(small):
    root, _, _ = small
    split = load_split(root, "val")
    mesh = load_mesh(split.mesh_path(0))
    out = render_mesh(mesh, split.cameras, supersample=SETTINGS.supersample, crease_deg=None, ambient=0.3,
                      lights=[[DirectionalLight(d, 0.7)] for d in (-split.cameras.forward).double().numpy()])
    expected = np.rint(out["image"] * 255)
    assert np.abs(split.images[0][..., 0].astype(float) - expected).max() <= 1
    assert np.array_equal(split.images[0][..., 0], split.images[0][..., 1])  # grey


def test_voxels_agree_with_the_mesh(small):
    root, _, _ = small
    split = load_split(root, "test")
    centres = np.stack(np.meshgrid(*grid_centres(VOXEL_BOUNDS, 32), indexing="ij"), axis=-1)
    np.testing.assert_allclose(centres[0, 0, 0], [-0.5 + 0.5 / 32] * 3)
    rng = np.random.default_rng(0)
    for i in range(len(split)):
        mesh = load_mesh(split.mesh_path(i))
        voxels = np.asarray(split.voxels[i])
        np.testing.assert_array_equal(voxels, solid_voxels(mesh, VOXEL_BOUNDS, 32))
        # the surface's cells and what they enclose: the volume plus at most a 2-cell shell
        assert mesh.volume <= voxels.mean() <= mesh.volume + 2 * mesh.area / 32
        cells = rng.integers(0, 32, size=(400, 3))
        inside = np.abs(winding_number(mesh, centres[tuple(cells.T)])) >= 0.5
        assert voxels[tuple(cells[inside].T)].all()  # every cell whose centre is inside


def test_splits_are_disjoint_and_cover(small):
    root, sources, _ = small
    ids = [load_split(root, name).ids for name in ("train", "val", "test")]
    assert sum(map(len, ids)) == len(sources)
    assert set().union(*map(set, ids)) == {s.id for s in sources}
    by_seed = split_objects(sources, seed=0)
    assert [s.id for s in by_seed["train"]] == ids[0]
    many = generated_sources(["chair", "car"], 40, seed=0)
    a, b = split_objects(many, seed=0), split_objects(many, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 64, "val": 8, "test": 8}
    assert a != b and a == split_objects(many, seed=0)


def test_split_counts():
    assert split_counts(10) == (8, 1, 1)
    assert split_counts(3) == (1, 1, 1)
    assert split_counts(2) == (2, 0, 0)
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)
    assert split_counts(100, (0.7, 0.15, 0.15)) == (70, 15, 15)
    with pytest.raises(InputError):
        split_objects(generated_sources(["chair"], 3), (0.5, 0.5, 0.5))


def test_resume_skips_finished_objects(small, monkeypatch):
    root, sources, _ = small
    monkeypatch.setattr(ds_write, "render_object", lambda *a, **k: pytest.fail("re-rendered a finished object"))
    again = write_dataset(root, sources, SETTINGS, seed=0, progress=False, source_info={"kind": "test"})
    assert (again.rendered, again.reused) == (0, len(sources))
    assert again.info == json.loads((root / "dataset.json").read_text())


def test_interrupted_run_is_unfinished_then_resumes(tmp_path, monkeypatch):
    root = tmp_path / "set"
    sources = generated_sources(["lamp"], 4, seed=3)
    real, calls = ds_write.build_part, []

    def flaky(*args):
        calls.append(args[1].id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(ds_write, "build_part", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(root, sources, SETTINGS, progress=False)
    assert not (root / "dataset.json").exists()
    with pytest.raises(InputError, match="unfinished dataset"):
        load_split(root, "train")
    monkeypatch.setattr(ds_write, "build_part", real)
    summary = write_dataset(root, sources, SETTINGS, progress=False)
    assert (summary.rendered, summary.reused) == (2, 2)
    assert len(load_split(root, "train")) + len(load_split(root, "val")) + len(load_split(root, "test")) == 4


def test_other_settings_rerender(tmp_path):
    sources = generated_sources(["vase"], 1, seed=0)
    root = tmp_path / "set"
    write_dataset(root, sources, SETTINGS, progress=False)
    other = write_dataset(root, sources, DatasetSettings(views=2, resolution=16), progress=False)
    assert other.rendered == 1
    assert load_split(root, "train").images.shape == (1, 2, 16, 16, 4)


def test_mesh_files(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    (folder / "box").mkdir(parents=True)
    (folder / "ball").mkdir()
    trimesh.creation.box((2.0, 1.0, 1.0)).export(folder / "box" / "long.obj")
    trimesh.creation.icosphere(3, radius=3.0).export(folder / "ball" / "big.ply")
    monkeypatch.chdir(folder / "ball")
    sources = mesh_sources([folder / "box", "big.ply"])
    assert [(s.id, s.category) for s in sources] == [("box_long", "box"), ("mesh_big", "mesh")]
    root = tmp_path / "set"
    write_dataset(root, sources, SETTINGS, progress=False)
    split = load_split(root, "train")
    box = split.ids.index("box_long")
    mesh = load_mesh(split.mesh_path(box))
    np.testing.assert_allclose(np.ptp(mesh.vertices, axis=0), np.array([2, 1, 1]) / np.sqrt(6), atol=1e-9)
    edges = np.linspace(-0.5, 0.5, 33)  # cell boundaries, the same on every axis
    half = np.array([2, 1, 1]) / np.sqrt(6) / 2
    overlap = [(edges[1:] > -h) & (edges[:-1] < h) for h in half]  # cells the box reaches into
    expected = overlap[0][:, None, None] & overlap[1][None, :, None] & overlap[2][None, None, :]
    np.testing.assert_array_equal(split.voxels[box], expected)  # indexed [x, y, z]


def test_bad_mesh_file_leaves_no_folder(tmp_path):
    good = tmp_path / "in" / "a.ply"
    good.parent.mkdir()
    trimesh.creation.box().export(good)
    bad = tmp_path / "in" / "b.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n" + bytes(40))
    root = tmp_path / "set"
    with pytest.raises(InputError, match="b.ply"):
        write_dataset(root, mesh_sources([good, bad]), SETTINGS, progress=False)
    assert not root.exists()
    with pytest.raises(InputError, match="no such file"):
        mesh_sources([tmp_path / "nope.obj"])


def test_load_split_errors(small, tmp_path):
    root, _, _ = small
    with pytest.raises(InputError, match="no such dataset folder"):
        load_split(tmp_path / "nope", "train")
    with pytest.raises(InputError, match="unknown split"):
        load_split(root, "holdout")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in root.rglob("*"):
        if path.is_file() and ".parts" not in path.parts:
            target = broken / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    images = broken / "val" / "images.npy"
    images.write_bytes(images.read_bytes()[:1000])  # truncated
    with pytest.raises(InputError, match="images.npy") as caught:
        load_split(broken, "val")
    assert "\n" not in str(caught.value)
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="dataset.json"):
        load_split(broken, "train")


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a dataset folder"):
        write_dataset(tmp_path, generated_sources(["vase"], 1), SETTINGS, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_worker_processes_write_the_same_parts(tmp_path):
    """workers > 1 renders in spawned processes; the parts equal those of a single process."""
    sources = generated_sources(["car", "lamp"], 4, seed=2)
    tiny = DatasetSettings(views=2, resolution=16, voxels=8)
    one, two = tmp_path / "one", tmp_path / "two"
    write_dataset(one, sources, tiny, progress=False)
    summary = write_dataset(two, sources, tiny, workers=2, progress=False)
    assert summary.rendered == len(sources)
    for name in ("train", "val", "test"):
        a, b = load_split(one, name), load_split(two, name)
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.voxels, b.voxels)
