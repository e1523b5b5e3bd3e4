"""SDFDiff's single-view network: its starting lattices, the regularisers against closed forms, the
dataset's lighting read back, training that reads only images and masks (and learns a shape from them,
coarse to fine), exact resume across the coarse-to-fine switch, loading, prediction and the command line."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from conftest import run_state as load_checkpoint
from test_tetnet import Forbidden, NormalSplit, voxel_iou

from zerolevel.cameras import Cameras
from zerolevel.cli import main
from zerolevel.errors import InputError
from zerolevel.learn.dataset.folder import decode_normals, load_split
from zerolevel.learn.dataset.settings import DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources
from zerolevel.learn.dataset.views import render_rgba
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.learn.predict import load_model, predict
from zerolevel.learn.sdfnet import SDFNet
from zerolevel.learn.sdfnet_train import SDFNetTrainConfig, SplitLighting, near_surface_regularisers, train
from zerolevel.learn.tetnet import TetNet, _owned_vertices, _sub_vertices
from zerolevel.render.lattice_trace import lattice_shading
from zerolevel.render.raycast import MeshRayCaster

SMALL = {"image_size": 32, "grid": 16, "channels": (16, 8, 8)}  # a small network for fast tests


def ellipsoids(radii, views: int = 8, size: int = 32) -> NormalSplit:
    """Ellipsoids seen from a ring under the datasets' headlight; no normal maps, voxels or meshes."""
    cameras = Cameras.ring(views, elevation_deg=30, distance=2.732, fov_deg=30, width=size, height=size)
    images, truth = [], []
    for r in radii:
        mesh = trimesh.creation.icosphere(3)
        mesh.vertices *= np.asarray(r)
        images.append(render_rgba(MeshRayCaster(mesh), cameras, 2))
        truth.append(mesh)
    return NormalSplit(np.stack(images), Forbidden(), cameras, ["ellipsoid"] * len(radii), Forbidden(), truth)


def config(**changes) -> SDFNetTrainConfig:
    settings = dict(batch_size=2, iterations=4, val_split=None, log_every=1, checkpoint_every=1000, grid=16,
                    channels=SMALL["channels"], render_size=None, fine_at=2)
    return SDFNetTrainConfig(**{**settings, **changes})


def run(split, out, cfg, **kwargs):
    return train(split, out, cfg, "cpu", progress=False, threads=2, **kwargs)


# ------------------------------------------------------------------------------------------------ network
def test_the_network_starts_as_a_sphere_on_both_lattices():
    net = SDFNet(**SMALL).eval()
    lattices = net(torch.rand(2, 4, 32, 32), levels=("coarse", "fine"))
    assert lattices["coarse"].shape == (2, 17, 17, 17) and lattices["fine"].shape == (2, 33, 33, 33)
    axis = torch.linspace(-0.55, 0.55, 17)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    sphere = points.norm(dim=-1) - 0.3
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(lattices["coarse"][inner], sphere.expand(2, -1, -1, -1)[inner])
    upsampled = F.interpolate(lattices["coarse"][:, None], size=(33,) * 3, mode="trilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(lattices["fine"][inner], upsampled[inner])
    assert (lattices["fine"][:, 0] > 0).all() and (lattices["coarse"][:, :, -1] > 0).all()  # a closed surface
    verts, faces = net.predict_meshes(torch.rand(1, 4, 32, 32))[0]
    mesh = trimesh.Trimesh(verts, faces)
    assert mesh.is_watertight and abs(mesh.volume - 4 / 3 * np.pi * 0.3 ** 3) < 0.01 * mesh.volume * 3


def test_owned_vertices_undo_the_sub_vertex_shuffle():
    x = torch.randn(2, 3, 9, 9, 9)
    owned = _owned_vertices(x)
    assert owned.shape == (2, 24, 5, 5, 5)
    for channel in range(3):
        torch.testing.assert_close(_sub_vertices(owned[:, 8 * channel:8 * channel + 8]), x[:, channel:channel + 1])


def test_near_surface_regularisers_against_closed_forms():
    """A sphere's signed distance: |grad f| = 1 (the eikonal term ~0) and lap f = 2 / r, so the term in
    cells is (2 cell / r)^2; a plane's Laplacian is 0. Nodes far from the surface do not count."""
    n, bound, radius = 41, 0.55, 0.3
    axis = torch.linspace(-bound, bound, n, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    cell = 2 * bound / (n - 1)
    eikonal, laplacian = near_surface_regularisers((points.norm(dim=-1) - radius)[None], cell, 2.0)
    assert eikonal < 2e-3
    assert abs(laplacian.sqrt() - 2 * cell / radius) < 0.05 * 2 * cell / radius
    plane = points[..., 1][None] * 1.0
    eikonal, laplacian = near_surface_regularisers(plane, cell, 2.0)
    assert eikonal < 1e-12 and laplacian < 1e-12
    far_away = (points.norm(dim=-1) - radius)[None] + 0 * points[..., 0]
    far_away[:, :5] = 7.0  # a jump far from the surface is outside the band
    assert near_surface_regularisers(far_away, cell, 2.0)[0] < 2e-3


@pytest.fixture(scope="module")
def varied_dataset(tmp_path_factory):
    """A tiny dataset folder rendered under the varied lighting (per object colour, per view light)."""
    root = tmp_path_factory.mktemp("sdfnet") / "set"
    write_dataset(root, generated_sources(["vase"], 3, seed=0),
                  DatasetSettings(views=4, resolution=32, lighting="varied"), progress=False)
    return root


def test_the_dataset_lighting_reproduces_its_images(varied_dataset):
    """Shading the dataset's own normal maps under `SplitLighting` gives its pixels back (up to the
    normal maps' 8-bit rounding and the images' antialiasing, on the mask's interior)."""
    split = load_split(varied_dataset, "train")
    lighting = SplitLighting.of(split)
    objects = np.repeat(np.arange(len(split)), 4)
    views = np.tile(np.arange(4), len(split))
    normals = torch.from_numpy(decode_normals(split.normals[objects, views]))
    images = torch.from_numpy(np.asarray(split.images[objects, views])).float() / 255
    interior = images[..., 3] > 0.999
    shaded = lattice_shading(normals, interior, *lighting.views(objects, views, "cpu", torch.float32))
    error = (shaded - images[..., :3]).abs()[interior]
    assert interior.sum() > 100 and error.mean() < 0.01 and error.max() < 0.1, (error.mean(), error.max())


# ------------------------------------------------------------------------------------------------ training
def test_training_reads_only_images_and_masks(tmp_path):
    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2), (0.25, 0.25, 0.35)], views=4)
    result = run(split, tmp_path / "run", config(iterations=3, batch_size=3))  # normals, voxels, meshes: Forbidden
    assert result.iterations == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [row for row in log if "loss" in row]
    assert all(np.isfinite(row["loss"]) for row in losses)
    # coarse to fine: the fine level's terms are zero until fine_at (2), then act
    assert losses[0]["fine_mask"] == 0 and losses[0]["coarse_mask"] > 0 and losses[2]["fine_mask"] > 0


def test_training_learns_an_ellipsoid_from_its_images_on_both_levels(tmp_path):
    """One flat ellipsoid seen from a ring: the surface moves from the starting sphere (voxel IoU
    under 0.5) to the ellipsoid on both lattices (over 0.75 after 40 iterations; the run reaches ~0.8)."""
    split = ellipsoids([(0.42, 0.12, 0.3)], views=8)
    truth = split.truth[0]
    start = SDFNet(**SMALL).eval()
    before = voxel_iou(*start.predict_meshes(torch.zeros(1, 4, 32, 32))[0], truth)
    run(split, tmp_path / "run", config(iterations=40, batch_size=4, lr=1e-3, decay_at=30, fine_at=20))
    net = load_model(tmp_path / "run", network=SDFNet)
    image = torch.from_numpy(split.images[0, 2]).permute(2, 0, 1)[None].float() / 255
    after = {}
    for level in ("coarse", "fine"):
        net.level = level
        after[level] = voxel_iou(*net.predict_meshes(image)[0], truth)
    assert before < 0.5 and min(after.values()) > 0.75, (before, after)


def test_resume_continues_exactly_across_the_coarse_to_fine_switch(tmp_path):
    split = ellipsoids([(0.42, 0.2, 0.25), (0.2, 0.4, 0.2)], views=4)
    settings = dict(checkpoint_every=2, dtype="float64", fine_at=3)
    run(split, tmp_path / "whole", config(iterations=4, **settings))
    run(split, tmp_path / "part", config(iterations=2, **settings))
    run(split, tmp_path / "part", config(iterations=4, **settings), resume=True)
    whole = load_checkpoint(tmp_path / "whole")["model"]
    part = load_checkpoint(tmp_path / "part")["model"]
    for name in whole:
        torch.testing.assert_close(part[name], whole[name], rtol=0, atol=0)


def test_a_checkpoint_names_its_network_and_predicts_closed_meshes(tmp_path):
    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2)], views=4)
    run(split, tmp_path / "run", config(iterations=1))
    net = load_model(tmp_path / "run", network=SDFNet)
    assert isinstance(net, SDFNet) and not net.training and net.config.grid == 16
    with pytest.raises(InputError, match="SDFNet network, not of a TetNet"):
        load_model(tmp_path / "run", network=TetNet)
    mesh = predict(net, split.images[0, 1])
    assert mesh.is_watertight and np.abs(mesh.vertices).max() < 0.55
    other = predict(net, split.images[0, 3])
    fused = predict(net, [split.images[0, 1], split.images[0, 3]])  # SDFs fused by their max: inside both
    assert fused.is_watertight and fused.volume <= min(mesh.volume, other.volume) + 1e-3
    with pytest.raises(InputError, match="no foreground"):
        predict(net, np.zeros_like(split.images[0, 1]))


def test_cli_trains_and_predicts_an_sdfnet(varied_dataset, tmp_path, capsys):
    run_dir, mesh = tmp_path / "run", tmp_path / "out.ply"
    code = main(["train", "sdfnet", str(varied_dataset), "-o", str(run_dir), "--iters", "2", "-q", "--set",
                 "render_size=16", "--set", "grid=16", "--set", "channels=16,8,8", "--set", "val_split=none"])
    assert code == 0, capsys.readouterr().err
    image = tmp_path / "view.png"
    split = load_split(varied_dataset, "test")
    import imageio.v3 as iio
    iio.imwrite(image, np.asarray(split.images[0, 1]))
    assert main(["predict", str(run_dir), str(image), "-o", str(mesh), "-q"]) == 0
    assert len(trimesh.load(mesh).faces) > 0
    code = main(["train", "sdfnet", str(varied_dataset), "-o", str(tmp_path / "r2"), "--normals-from", str(run_dir), "-q"])
    assert code == 2 and "--normals-from does not apply to sdfnet" in capsys.readouterr().err


def test_bad_input_gets_one_line_and_exit_2(varied_dataset, tmp_path, capsys):
    """A render size that does not divide the images; --level on a network with one output."""
    out = tmp_path / "run"
    code = main(["train", "sdfnet", str(varied_dataset), "-o", str(out), "--iters", "1", "-q",
                 "--set", "render_size=24"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "render_size=24 does not divide" in lines[0], lines
    assert not out.exists()
    tet = tmp_path / "tet"
    assert main(["train", "tetnet", str(varied_dataset), "-o", str(tet), "--iters", "1", "-q", "--set", "grid=16",
                 "--set", "channels=16,8,8", "--set", "val_split=none"]) == 0
    capsys.readouterr()
    code = main(["eval-set", str(tet), str(varied_dataset), "--level", "coarse", "--views", "1",
                 "--surface-views", "0", "-q"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--level chooses an sdfnet's lattice" in lines[0], lines


def test_the_carve_term_reads_both_lattices_at_the_coarse_nodes():
    """carve: per sample the mean hinge over the lattice nodes outside its object's visual hull
    (`tetnet_train.hull_outside` at the coarse nodes), the fine lattice read at its even nodes, the
    same points; the starting sphere pokes out of the flat ellipsoids' hulls, so the term acts."""
    from zerolevel.learn.sdfnet_train import _make_task
    from zerolevel.learn.tetnet_train import hull_outside
    from zerolevel.optim.distributed import Distributed

    split = ellipsoids([(0.35, 0.1, 0.25), (0.15, 0.3, 0.15)], views=6)
    task = _make_task(split, None, config(w_carve=1.0), Distributed(), torch.device("cpu"))
    axis = torch.linspace(-0.55, 0.55, 17)
    nodes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    assert torch.equal(task.outside_hull, hull_outside(split, nodes))
    with torch.no_grad():
        lattices = task.net(torch.rand(2, 4, 32, 32), levels=("coarse", "fine"))
    objects = np.array([1, 0])
    margin = 0.1 * 1.1 / 16
    hinge = (margin - lattices["coarse"].reshape(2, -1)).clamp_min(0)
    expected = sum(hinge[i][task.outside_hull[o]].mean() for i, o in enumerate(objects)) / 2
    coarse = task.carve(lattices["coarse"], objects)
    torch.testing.assert_close(coarse, expected)
    assert coarse > 0
    # the fine lattice starts as the coarse one upsampled: at its even nodes, the coarse values; its
    # margin is in its own (half) cells
    fine_hinge = (margin / 2 - lattices["coarse"].reshape(2, -1)).clamp_min(0)
    fine_expected = sum(fine_hinge[i][task.outside_hull[o]].mean() for i, o in enumerate(objects)) / 2
    torch.testing.assert_close(task.carve(lattices["fine"], objects), fine_expected)


def test_the_distance_carve_floor_is_a_lower_bound_of_the_distance_that_grows_away_from_the_hull():
    """carve_floor="distance": a node outside a sphere's visual hull is pushed past its distance to the
    hull (`hull_distance`: bounded from the masks), never past its distance to the sphere (it lies in its hull),
    and far nodes are pushed well past the margin."""
    from zerolevel.learn.sdfnet_train import _make_task
    from zerolevel.optim.distributed import Distributed

    radius = 0.25
    split = ellipsoids([(radius,) * 3], views=8)
    task = _make_task(split, None, config(w_carve=1.0, carve_floor="distance"), Distributed(), torch.device("cpu"))
    axis = torch.linspace(-0.55, 0.55, 17)
    nodes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    outside = task.outside_hull[0]
    floor = task.hull_distance[0].float()
    true = nodes.norm(dim=1) - radius
    assert (floor[outside] <= true[outside].clamp_min(0) + 1e-3).all()  # (a node on the sphere may count outside)
    assert (floor[~outside] == 0).all() and floor.max() > 0.15
    far = outside & (true > 0.15)  # and not loose: most far nodes get most of their distance
    assert (floor[far] / true[far]).median() > 0.5
    values = torch.zeros(1, 17, 17, 17)  # every node at 0: the hinge is the floor (at least the margin)
    margin = 0.1 * 1.1 / 16
    expected = floor.clamp_min(margin)[outside].mean()
    torch.testing.assert_close(task.carve(values, np.array([0])), expected)
    with pytest.raises(ValueError, match="carve_floor"):
        config(carve_floor="edt")
