"""Prediction from several images of one object (fusion) and its refinement by the tet-grid fit:
fusing known SDFs and vertex sets, the network's lattice carried onto the fit's grid, a refine that
corrects a wrong start, and `zerolevel predict`'s options and one-line errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from zerolevel.cameras import Cameras
from zerolevel.cli import main
from zerolevel.geometry.components import face_components
from zerolevel.geometry.marching import marching_tetrahedra
from zerolevel.geometry.occupancy import solid_voxels
from zerolevel.geometry.tetgrid import TetGrid
from zerolevel.images import write_normal_png, write_png
from zerolevel.learn.dataset.folder import decode_normals, load_split
from zerolevel.learn.dataset.settings import VOXEL_BOUNDS, DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.learn.evaluate import voxel_iou
from zerolevel.learn.predict import default_fusion, fuse, network_outputs, output_mesh, predict
from zerolevel.learn.refine import (REFINE, REFINE_ONE_VIEW, input_scene, refine, start_from_mesh,
                                    start_from_values)
from zerolevel.learn.softras_net import SoftRasNet
from zerolevel.learn.tetnet import TetNet
from zerolevel.learn.tetnet_train import TetNetTrainConfig, train
from zerolevel.recon.tetsdf import TetSDFConfig
from zerolevel.render.raycast import MeshRayCaster

SMALL = {"image_size": 32, "grid": 16, "channels": (16, 8, 8)}  # a small network for fast tests


def extent(mesh: trimesh.Trimesh) -> np.ndarray:
    return mesh.bounds[1] - mesh.bounds[0]


# ------------------------------------------------------------------------------------------------ fusion
def test_fusing_identical_predictions_changes_nothing():
    torch.manual_seed(0)
    net = TetNet(**SMALL, init_radius=0.25).eval()
    image = (np.random.default_rng(0).random((32, 32, 4)) * 255).astype(np.uint8)
    outputs = network_outputs(net, [image, image, image])
    for how in ("mean", "max"):
        torch.testing.assert_close(fuse(outputs, how), outputs[0])
    one, three = predict(net, image), predict(net, [image, image, image])
    np.testing.assert_array_equal(one.faces, three.faces)
    np.testing.assert_allclose(one.vertices, three.vertices, atol=1e-6)


def test_mean_of_two_sphere_sdfs_is_an_ellipsoid_and_max_their_lens():
    """Spheres of radius r at (+-c, 0, 0): the mean of their distances is zero where the distances to the
    two centres sum to 2r, an ellipsoid with semi-axes r and sqrt(r^2 - c^2); the max is zero on the
    boundary of their intersection, a lens of half-width r - c."""
    net = TetNet(image_size=32, grid=32, channels=(16, 8, 8))
    v = net.grid.vertices.double()
    r, c = 0.35, 0.15
    shift = torch.tensor([c, 0.0, 0.0], dtype=torch.float64)
    spheres = torch.stack([(v - shift).norm(dim=1) - r, (v + shift).norm(dim=1) - r]).float()
    cell = net.grid.cell
    ellipsoid = extent(output_mesh(net, fuse(spheres, "mean"))) / 2
    np.testing.assert_allclose(ellipsoid, [r, np.sqrt(r * r - c * c), np.sqrt(r * r - c * c)], atol=0.3 * cell)
    lens = extent(output_mesh(net, fuse(spheres, "max"))) / 2
    np.testing.assert_allclose(lens, [r - c, np.sqrt(r * r - c * c), np.sqrt(r * r - c * c)], atol=0.3 * cell)


def test_softras_predictions_fuse_by_their_vertices():
    torch.manual_seed(0)
    net = SoftRasNet(image_size=32).eval()
    outputs = torch.rand(2, len(net.template.vertices), 3) - 0.5
    mesh = output_mesh(net, fuse(outputs))
    np.testing.assert_allclose(mesh.vertices, (0.5 * (outputs[0] + outputs[1])).numpy(), atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, net.faces.numpy())
    with pytest.raises(ValueError, match="vertex positions are averaged"):
        fuse(outputs, "max")
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(outputs, "median")
    assert default_fusion(net) == "mean" and default_fusion(TetNet(**SMALL)) == "max"


# ------------------------------------------------------------------------------------------------ the start
def _wavy_values(grid: TetGrid) -> torch.Tensor:
    v = grid.vertices
    return (v / torch.tensor([0.4, 0.25, 0.3])).norm(dim=1) * 0.25 - 0.25 + 0.01 * torch.sin(20 * v[:, 0])


def _surface(grid: TetGrid, values: torch.Tensor, scale: float = 1.0) -> trimesh.Trimesh:
    verts, faces = marching_tetrahedra(grid.vertices, grid.tets, values)
    return trimesh.Trimesh(verts.double().numpy() * scale, faces.numpy())


def test_the_start_carries_the_networks_surface_onto_the_fits_grid():
    """Working space = dataset frame / the network's grid bound: the fit's 32 and 64 lattices nest the
    network's 32^3 one, so the surface is the same; a 48 lattice does not, and is within a cell."""
    net_grid = TetGrid.regular(32, bounds=(-0.55, 0.55))
    values = _wavy_values(net_grid)
    truth = _surface(net_grid, values)
    start = start_from_values(values, net_grid, radius=0.55)
    for resolution, tolerance in ((32, 1e-5), (64, 1e-5), (48, 0.01)):
        grid = TetGrid.regular(resolution)
        fit_values = start(grid)
        surface = _surface(grid, fit_values, scale=0.55)
        assert surface.volume == pytest.approx(truth.volume, rel=tolerance), resolution
        assert surface.area == pytest.approx(truth.area, rel=3 * tolerance), resolution
        # working units: a distance scales with the frame (the values near the centre: ~ -0.25 / 0.55)
        centre = fit_values[(grid.vertices.norm(dim=1) < 1e-6)]
        assert centre.item() == pytest.approx(-0.25 / 0.55, abs=0.01)
    assert surface.is_watertight


def test_the_start_from_a_mesh_is_its_signed_distance():
    mesh = trimesh.creation.box((0.6, 0.3, 0.4))
    grid = TetGrid.regular(32)
    values = start_from_mesh(mesh, radius=0.55)(grid)
    surface = _surface(grid, values, scale=0.55)
    np.testing.assert_allclose(extent(surface), [0.6, 0.3, 0.4], atol=0.55 * grid.cell)
    assert values[grid.vertices.norm(dim=1) < 1e-6].item() == pytest.approx(-0.15 / 0.55, abs=grid.cell)


# ------------------------------------------------------------------------------------------------ refine
def _box_views(views, size: int = 32, box: trimesh.Trimesh | None = None):
    """A box (or `box`) seen from the dataset's ring: RGBA images, world normals, the ring cameras, the box."""
    box = trimesh.creation.box((0.7, 0.35, 0.5)) if box is None else box
    ring = Cameras.ring(8, elevation_deg=30, distance=2.732, fov_deg=30, width=size, height=size)
    cameras = ring[torch.as_tensor(views)]
    out = MeshRayCaster(box).render(cameras, supersample=2)
    rgba = np.concatenate([np.repeat(out["image"][..., None], 3, -1), out["mask"][..., None]], -1)
    return list(np.round(rgba * 255).astype(np.uint8)), list(out["normal"]), cameras, box


@pytest.mark.parametrize("with_normals", [False, True])
def test_refine_corrects_a_wrong_start(with_normals):
    """An untrained network's sphere (radius 0.2) for a 0.7 x 0.35 x 0.5 box, refined on three views'
    masks (and normal maps) for a fixed number of iterations: the voxel IoU rises well above the start's
    (0.28 -> 0.62 from masks, 0.51 with normal maps when written)."""
    torch.manual_seed(0)
    net = TetNet(**SMALL, init_radius=0.2).eval()
    images, normals, cameras, box = _box_views([0, 3, 5])
    output = fuse(network_outputs(net, images))
    truth = solid_voxels(box, VOXEL_BOUNDS, 32)
    start = output_mesh(net, output)
    before = voxel_iou(start.vertices, start.faces, truth)
    scene = input_scene(images, cameras, normals if with_normals else None, radius=net.config.bounds)
    assert scene.modalities() == ({"mask", "normal"} if with_normals else {"mask"})
    config = TetSDFConfig(resolutions=(16,), level_shares=(1.0,), lr=0.3)  # coarse and fast: a test
    refined = refine(net, output, scene, seconds=60, config=config, progress=False, iters=40)
    after = voxel_iou(refined.mesh.vertices, refined.mesh.faces, truth)
    assert refined.result.iterations == 40 and refined.views == 3
    assert before < 0.3 and after > before + 0.15, (before, after)
    assert refined.mesh.is_watertight and np.abs(refined.mesh.vertices).max() < 0.55


def test_refine_from_one_view_keeps_the_depth_it_cannot_see():
    """Started from the box itself, a refine from one view's mask and normal map holds the surface with
    its pull towards the start (the default for one view), where the fit alone lets it drift (voxel IoU
    0.88 vs 0.74 when written)."""
    net = TetNet(**SMALL).eval()
    images, normals, cameras, box = _box_views([0])
    q = net.grid.vertices.abs() - torch.tensor([0.35, 0.175, 0.25])
    output = q.clamp_min(0).norm(dim=1) + q.amax(dim=1).clamp_max(0)  # the box's SDF on the network's grid
    scene = input_scene(images, cameras, normals, radius=net.config.bounds)
    truth = solid_voxels(box, VOXEL_BOUNDS, 32)
    scores = {}
    for name, config in (("one view", None), ("no prior", REFINE)):
        refined = refine(net, output, scene, seconds=60, config=config, progress=False, iters=60)
        scores[name] = voxel_iou(refined.mesh.vertices, refined.mesh.faces, truth)
        assert (refined.config.w_prior > 0) == (name == "one view")
    assert scores["one view"] > 0.8 and scores["one view"] > scores["no prior"] + 0.05, scores


def test_refine_keeps_every_piece_the_network_predicted():
    """A prediction in two pieces (a slab and a separate block, as a table top and a leg the network
    could not join) refined from one view keeps both, and not the specks of ~1e-4 of the slab's area
    the fit leaves after 10 iterations; the multi-view fit's rule (its largest piece) drops the block."""
    slab = trimesh.creation.box((0.7, 0.12, 0.5))
    block = trimesh.creation.box((0.16, 0.16, 0.16))
    block.apply_translation([0.0, -0.3, 0.0])
    images, normals, cameras, _ = _box_views([0], box=trimesh.util.concatenate([slab, block]))
    net = TetNet(**SMALL).eval()
    v = net.grid.vertices

    def box_sdf(centre, half):
        q = (v - torch.tensor(centre)).abs() - torch.tensor(half)
        return q.clamp_min(0).norm(dim=1) + q.amax(dim=1).clamp_max(0)

    output = torch.minimum(box_sdf([0.0, 0.0, 0.0], [0.35, 0.06, 0.25]), box_sdf([0.0, -0.3, 0.0], [0.08] * 3))
    scene = input_scene(images, cameras, normals, radius=net.config.bounds)
    pieces = {}
    for share in (REFINE_ONE_VIEW.min_piece, 1e-6, 1.0):
        config = replace(REFINE_ONE_VIEW, min_piece=share)
        mesh = refine(net, output, scene, seconds=60, config=config, progress=False, iters=10).mesh
        pieces[share] = face_components(mesh)[0]
    assert pieces[REFINE_ONE_VIEW.min_piece] == 2 and pieces[1e-6] > 2 and pieces[1.0] == 1, pieces
    assert REFINE.min_piece == REFINE_ONE_VIEW.min_piece


def test_refine_starts_from_a_softras_mesh():
    """SoftRas's prediction (an untrained network's template) becomes the fit's start through its
    signed distance; the refine then moves it towards the box."""
    torch.manual_seed(0)
    net = SoftRasNet(image_size=32).eval()
    images, _, cameras, box = _box_views([0, 3, 5])
    output = fuse(network_outputs(net, images))
    before, after = _refined_from_mesh(net, output, images, cameras, box)
    assert after > before + 0.1, (before, after)


def _refined_from_mesh(net, output, images, cameras, box) -> tuple[float, float]:
    """Voxel IoU with the box of a network's meshed prediction and of its 40-step refine from three views."""
    truth = solid_voxels(box, VOXEL_BOUNDS, 32)
    start = output_mesh(net, output)
    before = voxel_iou(start.vertices, start.faces, truth)
    scene = input_scene(images, cameras, radius=0.55)
    config = TetSDFConfig(resolutions=(16,), level_shares=(1.0,), lr=0.3)
    refined = refine(net, output, scene, seconds=60, config=config, progress=False, iters=40)
    return before, voxel_iou(refined.mesh.vertices, refined.mesh.faces, truth)


def test_refine_starts_from_an_sdfnet_lattice():
    """SDFDiff's network (untrained: a sphere of radius 0.3 on its lattices) is meshed by marching
    cubes and the fit starts from that mesh's signed distance; the refine then moves it towards the box."""
    from zerolevel.learn.sdfnet import SDFNet

    torch.manual_seed(0)
    net = SDFNet(**SMALL).eval()
    images, _, cameras, box = _box_views([0, 3, 5])
    output = fuse(network_outputs(net, images), default_fusion(net))
    assert default_fusion(net) == "max" and output.shape == (33 ** 3,)
    assert output_mesh(net, output).is_watertight
    before, after = _refined_from_mesh(net, output, images, cameras, box)
    assert after > before + 0.1, (before, after)


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def tetrun(tmp_path_factory):
    """A tiny dataset (version 2, 4 views at 32x32) and a small TetNet trained on it for 1 iteration."""
    root = tmp_path_factory.mktemp("refine")
    dataset = root / "set"
    write_dataset(dataset, generated_sources(["vase"], 3, seed=0), DatasetSettings(views=4, resolution=32),
                  progress=False)
    config = TetNetTrainConfig(batch_size=2, iterations=1, val_split=None, checkpoint_every=1000, grid=16,
                               channels=SMALL["channels"])
    train(dataset, root / "run", config, "cpu", progress=False, threads=1)
    split = load_split(dataset, "train")
    for k in range(4):
        write_png(root / f"view{k}.png", np.asarray(split.images[0, k]))
        write_normal_png(root / f"normal{k}.png", decode_normals(split.normals[0, k]))
    return root


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "-q", "--threads", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_predicts_from_several_views_and_refines(capsys, tetrun, tmp_path):
    r = tetrun
    code, stdout, _ = cli(capsys, "predict", str(r / "run"), str(r / "view0.png"), str(r / "view2.png"),
                          "-o", str(tmp_path / "fused.ply"))
    assert code == 0 and "predicted from 2 images, fused (max)" in stdout  # the tet network's default
    code, stdout, _ = cli(capsys, "predict", str(r / "run"), str(r / "view0.png"), str(r / "view2.png"),
                          "-o", str(tmp_path / "mean.ply"), "--fuse", "mean")
    assert code == 0 and "fused (mean)" in stdout
    fused, mean = (trimesh.load(tmp_path / name, process=False) for name in ("fused.ply", "mean.ply"))
    assert fused.volume < mean.volume + 1e-9  # the intersection lies inside the average's solid
    code, stdout, _ = cli(capsys, "predict", str(r / "run"), str(r / "view0.png"), str(r / "view2.png"),
                          "-o", str(tmp_path / "refined.obj"), "--dataset", str(r / "set"), "--views", "0", "2",
                          "--normals", str(r / "normal0.png"), str(r / "normal2.png"), "--refine", "1.5")
    assert code == 0, stdout
    assert "refined by the tet-grid fit to their masks and normals (views 0 2)" in stdout
    mesh = trimesh.load(tmp_path / "refined.obj", process=False)
    assert len(mesh.faces) > 0 and np.abs(mesh.vertices).max() < 0.55


def test_cli_refine_errors_are_one_line_and_no_mesh(capsys, tetrun, tmp_path):
    r = tetrun
    write_png(tmp_path / "big.png", np.asarray(load_split(r / "set", "train").images[0, 0]).repeat(2, 0).repeat(2, 1))
    run, v0, v1, data = str(r / "run"), str(r / "view0.png"), str(r / "view1.png"), str(r / "set")
    cases = [  # (arguments after RUN, words of the error line)
        ([v0, v1, "--dataset", data, "--views", "0"], ["--views", "1 value", "2 images"]),
        ([v0, "--dataset", data, "--views", "4", "--refine", "5"], ["dataset.json", "view 4", "0 to 3"]),
        ([v0, str(tmp_path / "big.png")], ["big.png", "32x32", "64x64"]),
        ([v0, "--refine", "5"], ["--refine", "--dataset", "--views"]),
        ([v0, "--dataset", data, "--views", "0", "--refine", "0"], ["--refine", "positive"]),
        ([v0, "--views", "0"], ["--views", "--dataset"]),
        ([v0, "--normals", str(r / "normal0.png")], ["--normals", "--refine"]),
        ([v0, "--dataset", data, "--views", "0", "--refine", "1", "--normals", str(tmp_path / "big.png")],
         ["big.png", "64x64"]),
    ]
    for args, words in cases:
        code, _, err = cli(capsys, "predict", run, *args, "-o", str(tmp_path / "m.ply"))
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, err)
        assert all(w in lines[0] for w in words), (args, lines[0])
        assert not (tmp_path / "m.ply").exists()


def test_cli_a_pixel_aligned_network_takes_each_images_camera(capsys, tetrun, tmp_path):
    """A tet network with pixel-aligned features predicts only with --dataset and --views (one line and
    exit 2 without, naming the image); eval-set takes each test image's camera from the dataset."""
    r = tetrun
    config = TetNetTrainConfig(batch_size=2, iterations=1, val_split=None, checkpoint_every=1000, grid=16,
                               channels=SMALL["channels"], pixel=4)
    train(r / "set", tmp_path / "run", config, "cpu", progress=False, threads=1)
    run, v0 = str(tmp_path / "run"), str(r / "view0.png")
    code, _, err = cli(capsys, "predict", run, v0, "-o", str(tmp_path / "m.ply"))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and v0 in lines[0] and "--views" in lines[0], err
    assert not (tmp_path / "m.ply").exists()
    code, stdout, _ = cli(capsys, "predict", run, v0, "-o", str(tmp_path / "m.ply"), "--dataset", str(r / "set"),
                          "--views", "0")
    assert code == 0 and len(trimesh.load(tmp_path / "m.ply", process=False).faces) > 0, stdout
    code, stdout, _ = cli(capsys, "eval-set", run, str(r / "set"), "--views", "2", "--points", "2000")
    assert code == 0 and "iou" in stdout.lower(), stdout
