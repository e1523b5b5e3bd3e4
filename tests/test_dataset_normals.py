"""Dataset folder version 2: per-view normal maps, the varied lighting, reading version-1 folders."""

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import trimesh

from zerolevel.cli.learning import DATASET_DEFAULTS, dataset_defaults
from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh
from zerolevel.learn.dataset import write as ds_write
from zerolevel.learn.dataset.folder import VERSION, decode_normals, load_split, part_path
from zerolevel.learn.dataset.settings import LIGHT, VARIED_LIGHT, DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources, mesh_sources
from zerolevel.learn.dataset.views import normals_to_int8, object_lighting
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.render.lights import DirectionalLight
from zerolevel.render.raycast import MeshRayCaster

ALL_TRAIN = (1.0, 0.0, 0.0)  # every object in train: one split to look at


def _sources(tmp_path_factory):
    """A chair, a vase and a sphere mesh file (icosphere, category "ball")."""
    folder = tmp_path_factory.mktemp("in") / "ball"
    folder.mkdir()
    trimesh.creation.icosphere(4).export(folder / "sphere.ply")
    return generated_sources(["chair", "vase"], 1, seed=0) + mesh_sources([folder / "sphere.ply"])


def _write(root, sources, lighting: str):
    settings = DatasetSettings(views=4, resolution=32, lighting=lighting)
    return write_dataset(root, sources, settings, ALL_TRAIN, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same three objects written with each lighting, and with the varied one a second time."""
    sources = _sources(tmp_path_factory)
    base = tmp_path_factory.mktemp("sets")
    for name, lighting in (("headlight", "headlight"), ("varied", "varied"), ("varied_again", "varied")):
        _write(base / name, sources, lighting)
    return base, sources


def _foreground_normals(split):
    alpha = np.asarray(split.images[..., 3])
    return decode_normals(split.normals), alpha > 0


def test_normals_are_unit_on_the_object_and_zero_elsewhere(folders):
    base, _ = folders
    for name in ("headlight", "varied"):
        info = json.loads((base / name / "dataset.json").read_text())
        assert info["version"] == VERSION == 2
        assert info["normals"] == {"space": "world", "encoding": "int8, round(127 * n)", "facing": "camera"}
        split = load_split(base / name, "train", normals=True)
        assert isinstance(split.normals, np.memmap)
        assert split.normals.shape == (3, 4, 32, 32, 3) and split.normals.dtype == np.int8
        normals, foreground = _foreground_normals(split)
        length = np.linalg.norm(normals, axis=-1)
        assert foreground.any() and (~foreground).any()
        assert length[foreground].min() >= 0.97 and length[foreground].max() <= 1.03
        assert not np.any(split.normals[~foreground])


def test_normals_face_the_camera(folders):
    base, _ = folders
    split = load_split(base / "headlight", "train", normals=True)
    normals, foreground = _foreground_normals(split)
    backward = -split.cameras.forward.double().numpy()  # (V, 3) towards each camera
    facing = np.einsum("nvhwk,vk->nvhw", normals, backward)
    assert (facing[foreground] > 0).mean() > 0.95
    _, rays = split.cameras.image_rays()  # (V, H, W, 3) pixel-centre rays
    along = np.einsum("nvhwk,vhwk->nvhw", normals, rays.double().numpy())
    assert along[foreground].max() < 0.05  # never away from the viewer (up to sub-pixel rays, int8)


def test_sphere_normals_match_the_analytic_ones(folders):
    base, _ = folders
    split = load_split(base / "headlight", "train", normals=True)
    i = split.ids.index("ball_sphere")
    radius = np.linalg.norm(load_mesh(split.mesh_path(i)).vertices, axis=1).mean()  # centred by normalisation
    origins, rays = (x.double().numpy() for x in split.cameras.image_rays())
    b = np.einsum("vhwk,vhwk->vhw", origins, rays)
    disc = b ** 2 - (np.einsum("vhwk,vhwk->vhw", origins, origins) - radius ** 2)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    analytic = (origins + t[..., None] * rays) / radius  # unit normal of the sphere at the centre ray's hit
    interior = hit & (split.images[i][..., 3] == 255) & (np.einsum("vhwk,vhwk->vhw", analytic, -rays) > 0.5)
    assert interior.sum() > 50
    stored = decode_normals(split.normals[i])[interior]
    cos = np.einsum("mk,mk->m", stored / np.linalg.norm(stored, axis=1, keepdims=True), analytic[interior])
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 2.0


def test_headlight_images_are_those_of_version_1(folders):
    """The v1 render, written out: grey, headlight 0.7 along each camera's axis, ambient 0.3."""
    base, sources = folders
    crease = {s.id: s.crease_deg for s in sources}
    split = load_split(base / "headlight", "train", normals=True)
    for i in range(len(split)):
        caster = MeshRayCaster(load_mesh(split.mesh_path(i)), crease_deg=crease[split.ids[i]])
        lights = [[DirectionalLight(d, 0.7)] for d in (-split.cameras.forward).double().numpy()]
        out = caster.render(split.cameras, supersample=2, lights=lights, ambient=0.3, albedo=1.0)
        rgb = np.clip(np.rint(out["image"][..., None] * np.ones(3, np.float32) * 255.0), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(split.images[i][..., :3], rgb)
        np.testing.assert_array_equal(split.images[i][..., 3], np.rint(out["mask"] * 255).astype(np.uint8))
        np.testing.assert_array_equal(split.normals[i], normals_to_int8(out["normal"]))
    assert json.loads((base / "headlight" / "dataset.json").read_text())["light"] == LIGHT


def test_varied_lighting_is_deterministic_and_differs_from_the_headlight(folders):
    base, _ = folders
    head, varied, again = (load_split(base / name, "train", normals=True)
                           for name in ("headlight", "varied", "varied_again"))
    np.testing.assert_array_equal(varied.images, again.images)
    np.testing.assert_array_equal(varied.normals, again.normals)
    np.testing.assert_array_equal(varied.images[..., 3], head.images[..., 3])  # the same geometry ...
    np.testing.assert_array_equal(varied.normals, head.normals)
    assert not np.array_equal(varied.images[..., :3], head.images[..., :3])  # ... lit otherwise
    foreground = varied.images[..., 3] == 255
    assert np.abs(varied.images[..., 0].astype(int) - varied.images[..., 1])[foreground].max() > 10  # coloured
    assert np.all(varied.images[..., :3] <= varied.images[..., 3:])  # premultiplied
    info = json.loads((base / "varied" / "dataset.json").read_text())
    assert info["lighting"] == "varied" and info["light"] == VARIED_LIGHT


def test_varied_lights_are_in_their_ranges(folders):
    base, sources = folders
    cameras = load_split(base / "varied", "train").cameras
    backward = -cameras.forward.double().numpy()
    lightings = [object_lighting("varied", s.id, cameras) for s in sources]
    for lit in lightings:
        assert np.all((lit.albedo >= 0.35) & (lit.albedo <= 1.0))
        assert np.all((lit.ambient >= 0.15) & (lit.ambient <= 0.35)) and lit.ambient.shape == (4,)
        for light, b in zip(lit.lights, backward):
            assert 0.5 <= light.intensity <= 0.9
            assert 0.0 <= np.degrees(np.arccos(np.clip(light.unit_direction() @ b, -1, 1))) <= 45.0 + 1e-9
    assert len({tuple(lit.albedo) for lit in lightings}) == len(sources)  # per object
    again = object_lighting("varied", sources[0].id, cameras)
    np.testing.assert_array_equal(again.ambient, lightings[0].ambient)


def test_another_lighting_redoes_the_parts(folders, tmp_path):
    base, sources = folders
    root = tmp_path / "set"
    shutil.copytree(base / "headlight", root)
    assert _write(root, sources, "headlight").rendered == 0
    summary = _write(root, sources, "varied")
    assert summary.rendered == len(sources)
    np.testing.assert_array_equal(load_split(root, "train").images, load_split(base / "varied", "train").images)


def test_a_version_1_part_is_redone(folders, tmp_path):
    """A part as version 1 wrote it (no normals, its key) is redone, never assembled without normals."""
    base, sources = folders
    root = tmp_path / "set"
    shutil.copytree(base / "headlight", root)
    source, settings = sources[0], DatasetSettings(views=4, resolution=32)
    v1_settings = {k: v for k, v in asdict(settings).items() if k != "lighting"}
    v1_key = json.dumps({"source": source.key(), "settings": v1_settings, "light": LIGHT,
                         "voxels": ds_write.VOXEL_RULE}, sort_keys=True)
    path = part_path(root, source.id)
    with np.load(path) as part:
        images, voxels = part["images"], part["voxels"]
    np.savez_compressed(path, images=images, voxels=voxels, key=np.array(v1_key))
    assert _write(root, sources, "headlight").rendered == 1
    np.testing.assert_array_equal(load_split(root, "train", normals=True).normals,
                                  load_split(base / "headlight", "train").normals)


def _as_version_1(source, target):
    """A copy of a version-2 folder made version 1: no normals.npy, "version": 1."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".parts"))
    for path in target.glob("*/normals.npy"):
        path.unlink()
    info = json.loads((target / "dataset.json").read_text())
    info["version"] = 1
    (target / "dataset.json").write_text(json.dumps(info))


def test_a_version_1_folder_loads_without_normals(folders, tmp_path):
    base, _ = folders
    old = tmp_path / "old"
    _as_version_1(base / "headlight", old)
    split = load_split(old, "train")
    assert split.normals is None
    np.testing.assert_array_equal(split.images, load_split(base / "headlight", "train").images)
    with pytest.raises(InputError) as caught:
        load_split(old, "train", normals=True)
    message = str(caught.value)
    assert "\n" not in message and str(old / "dataset.json") in message
    assert "version 1" in message and "zerolevel dataset" in message


def test_a_version_2_folder_with_bad_normals_is_refused(folders, tmp_path):
    base, _ = folders
    broken = tmp_path / "broken"
    shutil.copytree(base / "headlight", broken, ignore=shutil.ignore_patterns(".parts"))
    path = broken / "train" / "normals.npy"
    np.save(path, np.zeros((3, 4, 32, 32, 3), np.float32))
    with pytest.raises(InputError, match="normals.npy.*expected"):
        load_split(broken, "train")
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="normals.npy.*corrupt"):
        load_split(broken, "train")
    path.unlink()
    with pytest.raises(InputError, match="normals.npy.*missing"):
        load_split(broken, "train")
    info = json.loads((broken / "dataset.json").read_text())
    (broken / "dataset.json").write_text(json.dumps({**info, "version": 3}))
    with pytest.raises(InputError, match="dataset version 3"):
        load_split(broken, "train")


def test_per_view_ambient_equals_one_render_per_view():
    caster = MeshRayCaster(trimesh.creation.icosphere(2, radius=0.3))
    cameras = DatasetSettings(views=3, resolution=16).cameras()
    ambient = np.array([0.1, 0.25, 0.4])
    together = caster.render(cameras, supersample=2, ambient=ambient)["image"]
    for v in range(3):
        alone = caster.render(cameras[v], supersample=2, ambient=float(ambient[v]))["image"][0]
        np.testing.assert_array_equal(together[v], alone)


def test_dataset_defaults_per_network():
    assert dataset_defaults("softras") == {"resolution": 64, "lighting": "headlight"}
    assert dataset_defaults("tetnet") == {"resolution": 128, "lighting": "varied"}
    assert dataset_defaults("tetnet", res=64) == {"resolution": 64, "lighting": "varied"}
    assert dataset_defaults("softras", lighting="varied") == {"resolution": 64, "lighting": "varied"}
    assert set(DATASET_DEFAULTS) == {"softras", "tetnet"}
    with pytest.raises(InputError, match="--for"):
        dataset_defaults("nerf")
    with pytest.raises(InputError, match="lighting"):
        DatasetSettings(lighting="sunset")
