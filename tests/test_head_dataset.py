"""The head dataset: photographs consistent with their albedo, normals, lights and depth; sample sets
that agree with the surface; resumable; split by identity; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from conftest import assert_one_line_error
from zerolevel.cli import main
from zerolevel.errors import InputError
from zerolevel.learn import heads
from zerolevel.learn.dataset import heads as head_data
from zerolevel.learn.dataset.folder import part_path
from zerolevel.learn.dataset.heads import HeadDatasetSettings, HeadLighting, load_head_split, write_head_dataset

SETTINGS = HeadDatasetSettings(views=2, resolution=40, supersample=1, surface_samples=600, near_samples=600,
                               far_samples=200)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads") / "set"
    summary = write_head_dataset(root, 5, SETTINGS, seed=1, progress=False)
    return root, summary


def test_folder_loads_split_by_identity(dataset):
    root, summary = dataset
    assert summary.rendered == 5 and summary.info["splits"] == {"train": 3, "val": 1, "test": 1}
    splits = {name: load_head_split(root, name) for name in ("train", "val", "test")}
    ids = [i for s in splits.values() for i in s.ids]
    assert sorted(ids) == [f"head_{k:05d}" for k in range(5)]
    train = splits["train"]
    assert train.images.shape == (3, 2, 40, 40, 3) and train.surface.shape == (3, 600, 9)
    assert train.points.shape == (3, 800, 3) and train.labels.dtype == np.bool_
    for index in range(len(train)):
        assert trimesh.load(train.mesh_path(index)).visual.vertex_colors.shape[1] == 4
    identities = np.asarray(train.identity)
    assert not np.allclose(identities[0], identities[1])  # each head its own identity


def test_photographs_are_shaded_albedo_over_a_background(dataset):
    train = load_head_split(dataset[0], "train")
    for i in range(len(train)):
        mask = train.masks[i] == 255
        lighting = HeadLighting(train.light_dirs[i], train.light_colours[i], train.ambient[i])
        normals = train.normals[i].astype(np.float64) / 127
        rgb = head_data.shade(train.albedo[i] / 255.0, normals / np.maximum(np.linalg.norm(normals, axis=-1,
                                                                                          keepdims=True), 1e-9),
                              lighting)
        error = np.abs(rgb[mask] - train.images[i][mask] / 255.0)
        assert 0.2 < mask.mean() < 0.9 and np.median(error) < 0.01 and error.max() < 0.06
        assert np.all(train.albedo[i][~mask & (train.masks[i] == 0)] == 0)
        assert np.all(train.back_albedo[i][mask].max(axis=-1) > 0)  # every head pixel has a back surface


def test_depth_and_cameras_put_pixels_on_the_surface(dataset):
    train = load_head_split(dataset[0], "train")
    surface = cKDTree(np.asarray(train.surface[0, :, :3]))
    cameras = train.cameras(0)
    for v in range(len(cameras)):
        hit = train.masks[0, v] == 255
        uv = cameras[v].pixel_centers()[torch.from_numpy(hit)][None]
        depth = torch.from_numpy(np.asarray(train.depth[0, v])[hit])[None]
        points = cameras[v].unproject(uv.float(), depth.float())[0].numpy()
        gap, _ = surface.query(points)
        assert np.median(gap) < 0.02  # within the spacing of 600 surface samples on a unit-diagonal head
        centre_uv, _ = cameras[v].project(torch.zeros(1, 3))
        assert np.all(np.abs(centre_uv.numpy() - 20) < 8)  # the head is in the middle of the picture


def test_sample_sets_agree_with_the_surface(dataset):
    train = load_head_split(dataset[0], "train")
    for i in range(len(train)):
        surface = np.asarray(train.surface[i])
        assert np.allclose(np.linalg.norm(surface[:, 3:6], axis=1), 1, atol=1e-4)
        assert 0 <= surface[:, 6:].min() and surface[:, 6:].max() <= 1
        near = np.asarray(train.points[i, :600])
        labels = np.asarray(train.labels[i, :600])
        _, nearest = cKDTree(surface[:, :3]).query(near)
        outward = np.einsum("ij,ij->i", near - surface[nearest, :3], surface[nearest, 3:6])
        clear = np.abs(outward) > 0.01  # beyond the sample spacing the normal decides the side
        assert (labels[clear] == (outward[clear] < 0)).mean() > 0.9
        assert 0.15 < labels.mean() < 0.85 and np.asarray(train.labels[i, 600:]).mean() < 0.5


def test_rerun_reuses_and_is_deterministic(dataset, tmp_path):
    root, _ = dataset
    again = write_head_dataset(root, 5, SETTINGS, seed=1, progress=False)
    assert (again.rendered, again.reused) == (0, 5)
    other = write_head_dataset(tmp_path / "other", 2, SETTINGS, seed=1, progress=False)
    assert sum(other.info["splits"].values()) == 2
    for name in ("head_00000", "head_00001"):  # the first heads are the same whatever the count
        with np.load(part_path(root, name)) as a, np.load(part_path(tmp_path / "other", name)) as b:
            for array in ("images", "points", "labels", "surface"):
                np.testing.assert_array_equal(a[array], b[array])


def test_missing_model_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(heads, "MODEL_PATH", tmp_path / "gone.npz")
    out = tmp_path / "set"
    code = main(["dataset", "--generate", "heads", "--count", "2", "-o", str(out), "-q", "--threads", "1"])
    assert code == 2 and not out.exists()
    assert_one_line_error(capsys.readouterr().err, "gone.npz")


def test_bad_settings_and_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="fill"):
        HeadDatasetSettings(fill=(0.9, 1.5))
    with pytest.raises(InputError, match="not a head dataset"):
        load_head_split(tmp_path, "train")
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "zerolevel-dataset", "version": 2}))
    with pytest.raises(InputError, match="not a zerolevel-heads"):
        load_head_split(tmp_path, "train")
