"""The image -> tet-grid SDF network (Wu et al.): its starting surface, its regulariser against a closed
form, training that reads only images and normal maps (and learns a shape from them), exact resume,
loading and prediction, and the command line's one-line errors."""

import json
import os
import shutil
import socket
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import trimesh
from conftest import run_state as load_checkpoint

from zerolevel.cameras import Cameras
from zerolevel.cli import main
from zerolevel.errors import InputError
from zerolevel.geometry.occupancy import solid_voxels
from zerolevel.learn.dataset.settings import VOXEL_BOUNDS, DatasetSettings
from zerolevel.learn.dataset.sources import generated_sources
from zerolevel.learn.dataset.write import write_dataset
from zerolevel.learn.predict import load_model, predict
from zerolevel.learn.softras_net import SoftRasNet
from zerolevel.learn.tetnet import TetNet, _sub_vertices
from zerolevel.learn.tetnet_train import TetNetTrainConfig, lattice_eikonal, train
from zerolevel.optim.loop import read_log
from zerolevel.render.raycast import MeshRayCaster

SMALL = {"image_size": 32, "grid": 16, "channels": (16, 8, 8)}  # a small network for fast tests


class Forbidden:
    """Stands for what training must never read: any access fails the test."""

    def __getitem__(self, index):
        raise AssertionError("training read 3D data")

    def __array__(self, *args, **kwargs):
        raise AssertionError("training read 3D data")


@dataclass
class NormalSplit:
    """A split of ellipsoids rendered from a ring: images, normal maps; voxels and meshes forbidden."""

    images: np.ndarray
    normals: np.ndarray
    cameras: Cameras
    categories: list
    voxels: object = None
    truth: list = None

    def __len__(self):
        return len(self.images)

    def mesh_path(self, index):
        raise AssertionError("training read a mesh")


def ellipsoids(radii, views: int = 8, size: int = 32) -> NormalSplit:
    cameras = Cameras.ring(views, elevation_deg=30, distance=2.732, fov_deg=30, width=size, height=size)
    images, normals, truth = [], [], []
    for r in radii:
        mesh = trimesh.creation.icosphere(3)
        mesh.vertices *= np.asarray(r)
        out = MeshRayCaster(mesh).render(cameras, supersample=2)
        rgba = np.concatenate([np.repeat(out["image"][..., None], 3, -1), out["mask"][..., None]], -1)
        images.append(np.round(rgba * 255).astype(np.uint8))
        normals.append(np.round(out["normal"] * 127).astype(np.int8))
        truth.append(mesh)
    return NormalSplit(np.stack(images), np.stack(normals), cameras, ["ellipsoid"] * len(radii), Forbidden(), truth)


def voxel_iou(vertices, faces, truth) -> float:
    a = solid_voxels(trimesh.Trimesh(vertices, faces, process=False), VOXEL_BOUNDS, 32)
    b = solid_voxels(truth, VOXEL_BOUNDS, 32)
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def config(**changes) -> TetNetTrainConfig:
    settings = dict(batch_size=2, iterations=4, val_split=None, log_every=1, checkpoint_every=1000, grid=16,
                    channels=SMALL["channels"])
    return TetNetTrainConfig(**{**settings, **changes})


def run(split, out, cfg, **kwargs):
    return train(split, out, cfg, "cpu", progress=False, threads=2, **kwargs)


# ------------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("head,norm,basis,init", [("shuffle", "none", 0, "torch"), ("conv", "none", 0, "torch"),
                                                  ("shuffle", "group", 0, "torch"), ("shuffle", "none", 8, "torch"),
                                                  ("shuffle", "none", 0, "he"), ("shuffle", "none", 8, "he")])
def test_the_network_starts_as_a_closed_sphere(head, norm, basis, init):
    torch.manual_seed(0)
    net = TetNet(**SMALL, head=head, norm=norm, basis=basis, init=init).eval()
    values = net(torch.rand(2, 4, 32, 32))
    grid = net.grid
    expected = grid.vertices.norm(dim=1) - net.config.init_radius
    boundary = ((grid.coords == 0) | (grid.coords == grid.resolution)).any(dim=1)
    torch.testing.assert_close(values[0][~boundary], expected[~boundary])
    assert (values[:, boundary] >= 0.5 * grid.cell - 1e-6).all()
    vertices, faces = net.predict_meshes(torch.rand(1, 4, 32, 32))[0]
    mesh = trimesh.Trimesh(vertices, faces)
    assert mesh.is_watertight
    radius = np.linalg.norm(vertices, axis=1)
    assert abs(radius.mean() - 0.3) < 0.01 and radius.std() < 0.01


def _finest_features(net: TetNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's code and the decoder's finest lattice's features (what its head reads)."""
    decoder, code = net.decoder, net.encoder(net.stem(images))
    m = decoder.coarse + 1
    x = torch.relu(decoder.fc(code).reshape(len(code), -1, m, m, m))
    for conv in decoder.convs:
        x = torch.relu(conv(torch.nn.functional.interpolate(x, size=(2 * x.shape[-1] - 1,) * 3, mode="trilinear",
                                                             align_corners=True)))
    return code, x


@pytest.mark.parametrize("encoder", ["baseline", "pix2pix"])
def test_he_init_keeps_the_scale_of_every_layer_and_the_image_in_the_features(encoder):
    """init="he": the code and the finest lattice's features keep their scale (PyTorch's default start
    shrinks them ~6x per ReLU layer) and differ from image to image by a sizeable fraction, where the
    default start leaves the decoder's features nearly the same for any image."""
    images = torch.rand(2, 4, 32, 32)
    scores = {}
    for init in ("torch", "he"):
        torch.manual_seed(0)
        with torch.no_grad():
            code, x = _finest_features(TetNet(encoder, **SMALL, init=init).eval(), images)
        scores[init] = (code.pow(2).mean().sqrt(), x.pow(2).mean().sqrt(), (x[0] - x[1]).abs().mean() / x.abs().mean())
    code_rms, lattice_rms, image_share = scores["he"]
    assert 0.1 < code_rms < 3 and 0.05 < lattice_rms < 3 and image_share > 0.1
    assert scores["torch"][0] < 0.2 * code_rms and scores["torch"][1] < 0.5 * lattice_rms
    assert scores["torch"][2] < 0.2 * image_share


def test_group_norm_normalises_each_decoder_lattice_and_adds_no_state_without_it():
    """norm="group": every decoder lattice's features are normalised per sample and group (zero mean,
    unit variance before the ReLU); "none" has no norm parameters, so its checkpoints load as before."""
    torch.manual_seed(0)
    net = TetNet(**SMALL, norm="group")
    seen = []
    for norm in net.decoder.norms:
        norm.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
    net(torch.rand(2, 4, 32, 32))
    assert len(seen) == len(SMALL["channels"])
    for out in seen:
        groups = out.reshape(2, min(8, out.shape[1]), -1)
        torch.testing.assert_close(groups.mean(-1), torch.zeros(groups.shape[:2]), atol=1e-4, rtol=0)
        torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(groups.shape[:2]), atol=1e-2, rtol=0)
    assert not any("norms" in key for key in TetNet(**SMALL).state_dict())
    with pytest.raises(ValueError, match="unknown decoder norm"):
        TetNet(**SMALL, norm="batch")


def test_the_shuffle_head_gives_each_fine_vertex_its_coarse_vertex_channel():
    """Channel 4a + 2b + c at coarse vertex (i, j, k) is fine vertex (2i + a, 2j + b, 2k + c); the last
    coarse vertex of each axis keeps only its even fine vertex (the fine lattice has 2m - 1)."""
    m = 3
    x = torch.arange(2 * 8 * m ** 3, dtype=torch.float64).reshape(2, 8, m, m, m)
    fine = _sub_vertices(x)
    assert fine.shape == (2, 1, 2 * m - 1, 2 * m - 1, 2 * m - 1)
    for s, i, j, k, a, b, c in [(0, 0, 0, 0, 0, 0, 0), (1, 2, 1, 0, 0, 1, 1), (0, 1, 2, 1, 1, 0, 1), (1, 0, 1, 2, 1, 1, 0)]:
        assert fine[s, 0, 2 * i + a, 2 * j + b, 2 * k + c] == x[s, 4 * a + 2 * b + c, i, j, k]


def test_a_trained_shuffle_head_moves_fine_vertices_independently():
    """Its sub-vertex convolution reaches every fine vertex: a gradient on one odd vertex alone (no coarse
    vertex there) reaches the sub-vertex weights, and the decoder's output keeps the tet grid's size."""
    net = TetNet(**SMALL)
    values = net(torch.rand(2, 4, 32, 32))
    n = net.config.grid + 1
    assert values.shape == (2, n ** 3)
    values.reshape(2, n, n, n)[0, 3, 5, 7].backward()
    assert net.decoder.sub.weight.grad.abs().sum() > 0


def test_the_basis_term_is_a_learnt_field_per_code_coefficient():
    """basis=K: the decoder's offset gains (code -> K coefficients) times K fields on the full lattice,
    one learnt value per vertex each; a gradient on one vertex reaches exactly that vertex's row of
    fields. No basis: no such parameters (older checkpoints load as before)."""
    net = TetNet(**SMALL, basis=4)
    values = net(torch.rand(2, 4, 32, 32))
    n = net.config.grid + 1
    fields = net.decoder.basis[1].weight
    assert fields.shape == (n ** 3, 4) and not fields.any()
    vertex = (3 * n + 5) * n + 7
    values[0, vertex].backward()
    touched = fields.grad.abs().sum(dim=1).nonzero()[:, 0]
    assert touched.tolist() == [vertex]
    assert not any("basis" in key for key in TetNet(**SMALL).state_dict())
    with pytest.raises(ValueError, match="basis and pixel must be >= 0"):
        TetNet(**SMALL, basis=-1)


def test_pixel_aligned_features_read_the_image_at_each_vertex_projection():
    """pixel=K: each vertex of the decoder's finest lattice (every other vertex of the grid's, with the
    shuffle head) reads the input image at its projection in the input camera, and its depth. With the
    mixing layer reduced to one input, the features are the alpha channel's bilinear value at the grid
    vertices' projections (`mask_coverage`, an independent path), and the depth past the camera's
    distance to the origin. The network refuses to run without the cameras."""
    from zerolevel.geometry.visual_hull import mask_coverage

    torch.manual_seed(0)
    net = TetNet(**SMALL, pixel=4).eval()
    cameras = Cameras.ring(8, elevation_deg=30, distance=2.732, fov_deg=30, width=32, height=32)[torch.tensor([1, 6])]
    images = torch.rand(2, 4, 32, 32)
    n, m = net.config.grid + 1, net.decoder.finest
    assert m == net.config.grid // 2 + 1
    lattice = net.grid.vertices.reshape(n, n, n, 3)[::2, ::2, ::2].reshape(-1, 3)  # the grid's [x, y, z] order
    mix = net.pixel.mix
    maps = _pixel_maps(net, images)
    with torch.no_grad():
        mix.weight.zero_(), mix.bias.zero_()
        mix.weight[0, 3] = 1.0   # alpha, the image's 4th channel
        mix.weight[1, -1] = 1.0  # the depth, the last input
        features = net.pixel(images, maps, cameras)
    assert features.shape == (2, net.config.channels[-1], m, m, m)
    alpha = mask_coverage(cameras, images[:, 3:], lattice)[:, 0]
    torch.testing.assert_close(features[:, 0].reshape(2, -1), alpha)
    depth = ((lattice[None] - cameras.centers[:, None]) * cameras.forward[:, None]).sum(-1)
    relative = (depth - cameras.centers.norm(dim=-1)[:, None]) / net.config.bounds
    torch.testing.assert_close(features[:, 1].reshape(2, -1), relative.clamp_min(0), atol=1e-5, rtol=0)
    assert (relative < 0).any() and (relative > 0).any()  # the lattice lies before and behind the origin
    assert net.needs_cameras and not TetNet(**SMALL).needs_cameras
    with pytest.raises(ValueError, match="needs the 2 input cameras"):
        net(images)
    with pytest.raises(ValueError, match="needs the 2 input cameras"):
        net(images, cameras[torch.tensor([0])])


def _pixel_maps(net: TetNet, images: torch.Tensor) -> list:
    from zerolevel.learn.tetnet import PixelAligned, _encoder_maps

    return PixelAligned.pick(_encoder_maps(net.stem, net.encoder, images)[0])


def test_a_pixel_aligned_network_trains_and_predicts_from_its_images_cameras(tmp_path):
    """Once the decoder's head is not zero (after a first step), the values reach back through the
    pixel-aligned path to the encoder's maps; a trained run predicts only from each image with its
    camera (one clear error without), and the camera changes what it predicts."""
    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2)], views=4)
    run(split, tmp_path / "run", config(iterations=3, pixel=4, lr=1e-2))
    net = load_model(tmp_path / "run", network=TetNet)
    assert net.needs_cameras and net.config.pixel == 4
    image = split.images[0, 1]
    with pytest.raises(InputError, match="needs each image's camera"):
        predict(net, image)
    one = predict(net, image, cameras=split.cameras[torch.tensor([1])])
    other = predict(net, image, cameras=split.cameras[torch.tensor([2])])
    assert len(one.faces) > 0 and len(other.faces) > 0
    assert len(one.vertices) != len(other.vertices) or not np.allclose(one.vertices, other.vertices)
    net.train()
    net(torch.rand(2, 4, 32, 32), split.cameras[torch.tensor([0, 3])]).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pixel.parameters())


def test_the_gallery_draws_a_tetnet_prediction():
    """`eval-set --gallery` takes any mesh network: an untrained TetNet's sphere is drawn in the prediction
    tiles, and the same predictions with an empty surface leave them blank."""
    from zerolevel.learn.gallery import BACKGROUND, GAP, prediction_sheet

    split = ellipsoids([(0.3, 0.2, 0.25)], views=8)
    net = TetNet(**SMALL)
    step = 32 + GAP

    def prediction_tiles(sheet):
        return [sheet[GAP:GAP + 32, GAP + c * step:GAP + c * step + 32] for c in (1, 2, 4)]

    assert all((tile != BACKGROUND).any() for tile in prediction_tiles(prediction_sheet(net, split, 1, scale=1)))
    with torch.no_grad():
        net.decoder.start.fill_(1.0)  # every value outside: no surface
    assert all((tile == BACKGROUND).all() for tile in prediction_tiles(prediction_sheet(net, split, 1, scale=1)))


def test_lattice_eikonal_against_a_closed_form():
    n = 9
    axis = torch.linspace(-1, 1, n, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    cell = 2 / (n - 1)
    plane = (0.6 * x + 0.8 * z).reshape(1, -1)  # |grad| = 1: a distance
    assert lattice_eikonal(plane, n - 1, cell).item() == pytest.approx(0, abs=1e-12)
    steep = (3 * y).reshape(1, -1)  # |grad| = 3
    assert lattice_eikonal(steep, n - 1, cell).item() == pytest.approx(4)


def test_a_checkpoint_names_its_network_and_loads_only_as_it(tmp_path):
    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2)], views=4)
    run(split, tmp_path / "run", config(iterations=1))
    net = load_model(tmp_path / "run", network=TetNet)
    assert isinstance(net, TetNet) and not net.training and net.config.grid == 16
    with pytest.raises(InputError, match="TetNet network, not of a SoftRasNet"):
        load_model(tmp_path / "run", network=SoftRasNet)
    image = split.images[0, 1]
    mesh = predict(net, image)
    assert len(mesh.faces) > 0 and np.abs(mesh.vertices).max() < 0.55
    with pytest.raises(InputError, match="no foreground"):
        predict(net, np.zeros_like(image))
    with pytest.raises(InputError, match="32x32"):
        predict(net, np.zeros((64, 64, 4), np.uint8))


# ------------------------------------------------------------------------------------------------ training
def test_training_reads_only_images_and_normal_maps(tmp_path):
    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2), (0.25, 0.25, 0.35)], views=4)
    result = run(split, tmp_path / "run", config(iterations=3, batch_size=3))  # voxels, meshes: Forbidden
    assert result.iterations == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "normal", "mask", "shrink", "expand", "eikonal", "curvature"} <= set(log[0])
    assert all(np.isfinite(row["loss"]) for row in log if "loss" in row)


def test_the_losses_can_render_smaller_than_the_images():
    """render_size=16 on 32-pixel images: the ellipsoid's half-size render (downscaled cameras) matches
    its full-size mask averaged down, the averaged normal maps stay unit length on the foreground, the
    step's losses are finite; a size that does not divide the images' is one clear error."""
    from zerolevel.learn.tetnet_train import _make_task, downscale_targets
    from zerolevel.optim.distributed import Distributed

    split = ellipsoids([(0.3, 0.2, 0.25)], views=4)
    truth = split.truth[0]
    small = MeshRayCaster(truth).render(split.cameras.downscaled(2), supersample=4)["mask"]
    full = torch.from_numpy(split.images[0, ..., 3]).float() / 255
    normals = torch.from_numpy(split.normals[0]).float() / 127
    masks, normals = downscale_targets(full, normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-6), 2)
    assert masks.shape == (4, 16, 16) and (masks - torch.from_numpy(small).float()).abs().mean() < 0.02
    length = normals.norm(dim=-1)
    assert ((length - 1).abs()[masks > 0] < 1e-5).all() and (length[masks == 0] == 0).all()
    task = _make_task(split, None, config(batch_size=2, render_size=16), Distributed(), torch.device("cpu"))
    parts = task.batch_losses(task.next_batch(0))
    assert all(torch.isfinite(parts[name]) for name in parts) and parts["mask"] > 0
    with pytest.raises(InputError, match="render_size=12 does not divide the dataset's 32-pixel images"):
        _make_task(split, None, config(render_size=12), Distributed(), torch.device("cpu"))


def test_extra_views_are_the_objects_other_views(tmp_path):
    """views=4: each sample is also rendered in two more of its object's views, distinct and neither its
    input view a nor its pair's view b; more views than the dataset has is one clear error."""
    from zerolevel.learn.tetnet_train import _make_task
    from zerolevel.optim.distributed import Distributed

    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2)], views=6)
    task = _make_task(split, None, config(batch_size=8, views=4), Distributed(), torch.device("cpu"))
    for iteration in range(5):
        batch = task.next_batch(iteration)
        extra = task.extra_views(batch)
        assert extra.shape == (2, 8)
        picked = np.stack([batch.view_a, batch.view_b, *extra], axis=1)
        assert all(len(set(row)) == 4 for row in picked) and (picked < 6).all()
    parts = task.batch_losses(task.next_batch(5))
    assert torch.isfinite(parts["loss"]) and parts["normal"] > 0
    with pytest.raises(InputError, match="views=7 per sample, but the dataset has 6"):
        _make_task(split, None, config(views=7), Distributed(), torch.device("cpu"))


def test_one_view_per_sample_renders_the_input_view_alone(monkeypatch):
    """views=1: each sample's surface is scored in its input view only, against that view's mask and
    normal map; views=0 is an error."""
    from zerolevel.learn.sampling import split_normals
    from zerolevel.learn.tetnet_train import TetNetTraining, _make_task
    from zerolevel.optim.distributed import Distributed

    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2)], views=4)
    task = _make_task(split, None, config(batch_size=2, views=1), Distributed(), torch.device("cpu"))
    seen = {}
    original = TetNetTraining.surface_terms

    def spy(self, values, cameras, masks, normals):
        seen.update(cameras=cameras, masks=masks, normals=normals)
        return original(self, values, cameras, masks, normals)

    monkeypatch.setattr(TetNetTraining, "surface_terms", spy)
    batch = task.next_batch(0)
    parts = task.batch_losses(batch)
    assert torch.isfinite(parts["loss"]) and parts["normal"] > 0
    assert len(seen["cameras"]) == 2
    assert torch.equal(seen["cameras"].world_to_camera, batch.cameras_a.world_to_camera)
    assert torch.equal(seen["masks"], batch.images_a[:, 3])
    assert torch.equal(seen["normals"], split_normals(split, batch.objects, batch.view_a, "cpu"))
    with pytest.raises(ValueError, match="views must be >= 1"):
        config(views=0)


def test_the_batch_is_scored_as_each_sample_alone():
    """The surface terms of a batch (every sample's mesh made, rendered and scored at once) are the mean
    over its samples of each sample's terms computed on its own mesh and views, a vanished surface
    scoring 0; so are their gradients."""
    from zerolevel import losses as L
    from zerolevel.geometry.tetgrid import inside_ends
    from zerolevel.learn.tetnet_train import _make_task
    from zerolevel.optim.distributed import Distributed
    from zerolevel.render.raster import render_normals

    split = ellipsoids([(0.3, 0.2, 0.25), (0.2, 0.3, 0.2), (0.25, 0.25, 0.3)], views=6)
    task = _make_task(split, None, config(batch_size=3, views=3), Distributed(), torch.device("cpu"))
    batch = task.next_batch(0)
    cameras = task.train_split.cameras[[0, 2, 4, 1, 3, 5, 2, 4, 0]]  # sample i's views at i + 3 k
    masks = torch.cat([batch.images_a[:, 3], batch.images_b[:, 3], batch.images_a[:, 3]])
    normals = torch.randn(9, 32, 32, 3)
    with torch.no_grad():
        values = task.net(torch.rand(3, 4, 32, 32)) + torch.tensor([[0.0], [0.05], [1.0]])  # sample 2: no surface
    values.requires_grad_(True)
    parts, missing = task.surface_terms(values, cameras, masks, normals)
    margin = task.config.margin * task.net.grid.cell
    expected = {name: 0.0 for name in parts}
    for i in range(3):
        views = torch.tensor([i, i + 3, i + 6])
        verts, faces, edges = task.net.mesh(values[i], return_edges=True)
        if len(faces) == 0:
            assert i == 2 and torch.equal(missing[views], masks[views] > 0.5)
            continue
        out = render_normals(verts, faces, cameras[views])
        covered, wanted = out["fragments"].mask > 0.5, masks[views] > 0.5
        extra = covered & ~wanted
        terms = {"normal": L.normal_l1(out["normal"], normals[views], covered & wanted),
                 "mask": L.mask_l2(out["mask"], masks[views]),
                 "shrink": L.shrink_loss(inside_ends(values[i], edges[faces[out["fragments"].face[extra]]]), margin),
                 "curvature": L.mesh_area(verts, faces)}
        for name, term in terms.items():
            expected[name] = expected[name] + term / 3
        assert torch.equal(missing[views], wanted & ~covered)
    for name, term in parts.items():
        torch.testing.assert_close(term, expected[name], rtol=1e-5, atol=1e-7)
        grad = torch.autograd.grad(term, values, retain_graph=True)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(expected[name], values, retain_graph=True)[0],
                                   rtol=1e-4, atol=1e-7)


def test_the_carve_term_pushes_out_what_any_mask_of_the_object_sees_as_background():
    """hull_outside: per object, the lattice vertices whose projection falls on the background of any
    of its views (as the visual hull field computes, one object at a time); the ellipsoid itself never
    among them. carve: per sample the mean hinge over its object's such vertices, averaged over the
    samples; its descent raises exactly the ones below +margin (the starting sphere is wider than the
    flat ellipsoids: some are)."""
    from zerolevel.geometry.visual_hull import VisualHullField
    from zerolevel.learn.tetnet_train import _make_task, hull_outside
    from zerolevel.optim.distributed import Distributed

    radii = [(0.35, 0.1, 0.25), (0.15, 0.3, 0.15)]
    split = ellipsoids(radii, views=6)
    task = _make_task(split, None, config(batch_size=2, w_carve=1.0), Distributed(), torch.device("cpu"))
    points = task.net.grid_vertices
    outside = hull_outside(split, points, chunk=1)
    assert torch.equal(outside, task.outside_hull) and outside.shape == (2, len(points))
    for i, r in enumerate(radii):
        masks = torch.from_numpy(split.images[i, ..., 3]).float() / 255
        expected = VisualHullField(split.cameras, masks).coverage(points).amin(dim=0) < 0.5
        assert torch.equal(outside[i], expected)
        inside = ((points / torch.tensor(r)) ** 2).sum(dim=1) < 0.9
        assert not outside[i][inside].any() and outside[i].float().mean() > 0.8
    with torch.no_grad():
        values = task.net(torch.rand(2, 4, 32, 32))
    values.requires_grad_(True)
    carve = task.carve(values, np.array([1, 0]))  # sample 0 is object 1
    hinge = (task.config.margin * task.net.grid.cell - values).clamp_min(0.0)
    expected = sum(hinge[i][outside[o]].mean() for i, o in enumerate([1, 0])) / 2
    torch.testing.assert_close(carve, expected)
    grad = torch.autograd.grad(carve, values)[0]
    margin = task.config.margin * task.net.grid.cell
    pushed = outside[[1, 0]] & (values < margin)
    assert carve > 0 and pushed.any()
    assert torch.equal(grad < 0, pushed) and not grad[~pushed].any()


def test_the_lowest_value_along_a_ray_of_the_starting_sphere(tmp_path):
    """The expand term's search on the untrained network (the sphere of radius 0.3): a ray at distance d
    from the centre has its lowest value d - 0.3 (within half a cell: the search samples every half
    cell); a ray that misses the grid's box has none (+inf)."""
    from zerolevel.learn.tetnet_train import _make_task
    from zerolevel.optim.distributed import Distributed

    split = ellipsoids([(0.3, 0.2, 0.25)], views=4)
    task = _make_task(split, None, config(), Distributed(), torch.device("cpu"))
    with torch.no_grad():
        values = task.net(torch.rand(1, 4, 32, 32))
    offsets = torch.tensor([0.0, 0.1, 0.2, 0.25, 2.0])
    origins = torch.stack([offsets, torch.zeros(5), torch.full((5,), -2.0)], dim=1)[None]
    directions = torch.tensor([[[0.0, 0.0, 1.0]] * 5])
    lowest = task.lowest_on_rays(values, origins, directions)[0]
    expected = offsets[:4] - 0.3
    assert (lowest[:4] - expected).abs().max() < 0.5 * task.net.grid.cell, (lowest, expected)
    assert torch.isinf(lowest[4])


def test_training_without_normal_maps_is_refused(tmp_path):
    split = ellipsoids([(0.3, 0.2, 0.25)], views=4)
    split.normals = None
    with pytest.raises(InputError, match="no normal maps"):
        run(split, tmp_path / "run", config())


def test_training_learns_an_ellipsoid_from_its_normal_maps(tmp_path):
    """One flat ellipsoid seen from a ring: the network's surface moves from the starting sphere
    (voxel IoU under 0.5 with the truth) to the ellipsoid (over 0.7 after 60 iterations; the run
    reaches 0.75-0.77, and a change of summation order alone moves it by ~0.02)."""
    split = ellipsoids([(0.42, 0.12, 0.3)], views=8)
    truth = split.truth[0]
    start = TetNet(grid=16, image_size=32, channels=SMALL["channels"]).eval()
    before = voxel_iou(*start.predict_meshes(torch.zeros(1, 4, 32, 32))[0], truth)
    run(split, tmp_path / "run", config(iterations=60, batch_size=4, lr=1e-3, decay_at=40))
    net = load_model(tmp_path / "run", network=TetNet)
    image = torch.from_numpy(split.images[0, 2]).permute(2, 0, 1)[None].float() / 255
    after = voxel_iou(*net.predict_meshes(image)[0], truth)
    assert before < 0.5 and after > 0.7, (before, after)


def test_resume_continues_exactly(tmp_path):
    """Also the random picks of the expand term's rays (ellipsoids wider than the starting sphere leave
    more missing pixels than `expand_rays`), which the checkpoint keeps."""
    split = ellipsoids([(0.42, 0.2, 0.25), (0.2, 0.4, 0.2)], views=4)
    settings = dict(checkpoint_every=2, dtype="float64", expand_rays=8)
    cfg = config(iterations=4, **settings)
    run(split, tmp_path / "whole", cfg)
    run(split, tmp_path / "part", config(iterations=2, **settings))
    run(split, tmp_path / "part", cfg, resume=True)
    whole = load_checkpoint(tmp_path / "whole")["model"]
    part = load_checkpoint(tmp_path / "part")["model"]
    for name in whole:
        torch.testing.assert_close(part[name], whole[name], rtol=0, atol=0)


DDP_RADII = [(0.3, 0.2, 0.25), (0.2, 0.3, 0.2), (0.25, 0.25, 0.3), (0.35, 0.15, 0.2)]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, cfg: TetNetTrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    train(ellipsoids(DDP_RADII, views=4), run_dir, cfg, "cpu", progress=False, threads=1)


def test_two_processes_match_one(tmp_path):
    """torchrun's setting: 2 gloo processes x 2 samples == 1 process x 4 samples (every loss is a mean
    over the process's samples, DDP averages the gradients). expand_rays is above any sample's missing
    pixels, so that no random pick of rays differs between the processes' generators."""
    cfg = config(batch_size=4, iterations=2, dtype="float64", expand_rays=100_000, views=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), cfg), nprocs=2)
    run(ellipsoids(DDP_RADII, views=4), tmp_path / "one", cfg)
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert ddp["iteration"] == one["iteration"] == 2
    for key, value in one["model"].items():
        assert torch.allclose(ddp["model"][key], value, rtol=0, atol=1e-10), key
    assert [r["loss"] for r in read_log(tmp_path / "ddp" / "log.jsonl")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "one" / "log.jsonl")], rel=1e-10)


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def version_1_dataset(tmp_path_factory):
    """A tiny dataset folder made version 1 (no normal maps)."""
    root = tmp_path_factory.mktemp("tetnet") / "set"
    write_dataset(root, generated_sources(["vase"], 3, seed=0), DatasetSettings(views=4, resolution=32),
                  progress=False)
    shutil.rmtree(root / ".parts")
    for path in root.glob("*/normals.npy"):
        path.unlink()
    info = json.loads((root / "dataset.json").read_text())
    info["version"] = 1
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_cli_train_tetnet_on_a_dataset_without_normals(capsys, version_1_dataset, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "tetnet", str(version_1_dataset), "-o", str(out), "--iters", "1", "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "version 1 has no normal maps" in lines[0], err
    assert str(version_1_dataset / "dataset.json") in lines[0]
    assert not out.exists()


def test_cli_train_tetnet_refuses_softras_options(capsys, version_1_dataset, tmp_path):
    code = main(["train", "tetnet", str(version_1_dataset), "-o", str(tmp_path / "run"), "--no-cross-render", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--cross-render does not apply to tetnet" in err
