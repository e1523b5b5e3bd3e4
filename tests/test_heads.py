"""The head generator: the shipped model, closed random heads in the project's frame, their skin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zerolevel.cameras import Cameras
from zerolevel.errors import InputError
from zerolevel.learn import heads
from zerolevel.learn.heads import EYE_LEFT, EYE_RIGHT, SKIN, HeadModel, generate_head, load_model
from zerolevel.render.raycast import MeshRayCaster


@pytest.fixture(scope="module")
def model() -> HeadModel:
    return load_model()


def test_shipped_model_is_compact_and_consistent(model):
    assert heads.MODEL_PATH.stat().st_size < 4e6  # "a few MB at most"
    assert (heads.MODEL_PATH.parent / "LICENSE-ict-facekit.txt").is_file()
    assert len(model.identity_modes) >= 16 and len(model.expression_modes) >= 20
    assert set(np.unique(model.part)) == {SKIN, EYE_LEFT, EYE_RIGHT}
    assert model.regions.min() >= 0 and model.regions.max() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_head_is_closed_outward_and_in_the_project_frame(model, seed):
    head = generate_head(seed, model)
    for piece in head.pieces():
        assert piece.is_watertight and piece.volume > 0
    skin = head.pieces()[0]
    lo, hi = skin.bounds
    assert 0.85 < np.linalg.norm(hi - lo) < 1.15  # the neutral head's diagonal is 1; people differ a little
    nose = skin.vertices[np.argmin(skin.vertices[:, 2])]  # the face looks towards -z: the nose is in front
    assert abs(nose[0]) < 0.02 and nose[1] > lo[1] + 0.3 * (hi[1] - lo[1])  # on the midline, above the neck
    eyes = [head.vertices[head.part == k].mean(0) for k in (EYE_LEFT, EYE_RIGHT)]
    assert abs(eyes[0][1] - eyes[1][1]) < 0.01 and abs(eyes[0][0] + eyes[1][0]) < 0.01  # level, symmetric
    assert head.contains(np.array([eyes[0], [0.0, 0.1, 0.0], [0.0, 0.0, -0.6], [0.5, 0.5, 0.5]])).tolist() == \
        [True, True, False, False]


def test_seed_decides_the_head(model):
    a, b, c = generate_head(3, model), generate_head(3, model), generate_head(4, model)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.albedo, b.albedo)
    shift = np.linalg.norm(a.vertices - c.vertices, axis=1)
    assert np.median(shift) > 2e-3  # identities differ by millimetres to centimetres (head diagonal ~47 cm)
    assert not np.allclose(a.albedo, c.albedo)


def test_expressions_are_sparse_and_bounded(model):
    counts, jaw = [], model.expression_names.index("jawOpen")
    for seed in range(40):
        e = generate_head(seed, model).expression
        counts.append(np.count_nonzero(e))
        assert e.min() >= 0 and e.max() <= 1 and e[jaw] <= heads.EXPRESSION_LIMITS["jawOpen"]
    assert min(counts) == 0 and 0 < np.mean(counts) < 7


def test_albedo_has_skin_lips_brows_and_eyes(model):
    for seed in range(6):
        head = generate_head(seed, model)
        a = head.albedo
        assert a.min() >= 0 and a.max() <= 1
        luminance = a.mean(axis=1)
        cheeks, lips = model.region("cheeks") > 0.9, model.region("lips") > 0.9
        brows, pupil = model.region("brows") > 0.9, model.region("pupil") > 0.9
        assert luminance[lips].mean() < luminance[cheeks].mean()  # lips darker than the skin beside them
        assert (a[lips, 0] / a[lips].sum(1)).mean() > (a[cheeks, 0] / a[cheeks].sum(1)).mean() - 0.02  # redder
        assert luminance[pupil].max() < 0.1
        skin_tone = np.median(a[head.part == SKIN], axis=0)
        assert luminance[brows].mean() < 0.85 * skin_tone.mean()  # brows darker than the skin


def test_missing_or_corrupt_model_is_one_line(tmp_path):
    with pytest.raises(InputError, match="missing") as missing:
        HeadModel.load(tmp_path / "none.npz")
    assert "none.npz" in str(missing.value)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(heads.MODEL_PATH.read_bytes()[:5000])
    with pytest.raises(InputError, match="corrupt head model") as corrupt:
        HeadModel.load(truncated)
    assert "\n" not in str(corrupt.value) and "cut.npz" in str(corrupt.value)
    with np.load(heads.MODEL_PATH) as data:
        arrays = dict(data)
    arrays["regions"] = arrays["regions"][:10]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match="regions has shape"):
        HeadModel.load(tmp_path / "bad.npz")
    del arrays["faces"]
    np.savez(tmp_path / "nofaces.npz", **arrays)
    with pytest.raises(InputError, match="no faces"):
        HeadModel.load(tmp_path / "nofaces.npz")


def test_ray_caster_interpolates_vertex_attributes(model):
    """Vertex positions as attributes come back as the surface point each pixel's ray hits."""
    mesh = generate_head(0, model).mesh()
    cameras = Cameras.look_at(np.array([[0.0, 0.1, -1.5], [1.0, 0.0, -1.0]]), fov_deg=35, width=48, height=48)
    out = MeshRayCaster(mesh, crease_deg=None).render(cameras, attributes=np.asarray(mesh.vertices))
    hit = out["mask"] > 0
    assert out["attributes"].shape == (2, 48, 48, 3) and hit.sum() > 500
    assert np.all(out["attributes"][~hit] == 0)
    uv = cameras.pixel_centers()[None].expand(2, -1, -1, -1)
    points = torch.stack([cameras[b].unproject(uv[b].reshape(-1, 2), torch.from_numpy(out["depth"][b]).reshape(-1))
                          for b in range(2)]).reshape(2, 48, 48, 3).numpy()
    np.testing.assert_allclose(out["attributes"][hit], points[hit], atol=2e-5)


def test_head_is_a_ring_dataset_category(tmp_path):
    from zerolevel.learn import shapes
    from zerolevel.learn.dataset.folder import load_split
    from zerolevel.learn.dataset.settings import DatasetSettings
    from zerolevel.learn.dataset.sources import generated_sources
    from zerolevel.learn.dataset.write import write_dataset

    mesh = shapes.generate("head", 4)
    lo, hi = mesh.bounds
    assert abs(np.linalg.norm(hi - lo) - 1) < 1e-9 and np.allclose((lo + hi) / 2, 0)
    assert "head" not in shapes.CATEGORIES  # not in "all": the object categories stay as benchmarked
    sources = generated_sources(["head"], 3, seed=0)
    write_dataset(tmp_path / "set", sources, DatasetSettings(views=2, resolution=24), progress=False)
    train = load_split(tmp_path / "set", "train")
    volume = shapes.generate("head", sources[[s.id for s in sources].index(train.ids[0])].seed).volume
    assert train.categories == ["head"] and volume < train.voxels[0].mean() < 2 * volume  # + the surface cells
    assert (train.images[0, 0, ..., 3] > 0).mean() > 0.1
