"""The single-view network: template, encoders, SoftRas's decoder parametrisation, losses (closed forms,
dense references, finite-difference gradients)."""

import math

import numpy as np
import pytest
import torch
import trimesh

from zerolevel.learn.encoders import ENCODERS, GlobalBatchNorm2d, make_encoder
from zerolevel.losses import (dihedral_cosines, flatten_loss, laplacian_loss, laplacian_vectors,
                                    silhouette_loss, soft_iou)
from zerolevel.learn.softras_net import NetConfig, SoftRasNet
from zerolevel.learn.template import mesh_topology, sphere_template


def icosahedron(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit icosahedron: vertices (12, 3), edges (30, 2), wings (30, 4)."""
    mesh = trimesh.creation.icosphere(subdivisions=0)
    edges, wings = mesh_topology(mesh.faces)
    return torch.as_tensor(mesh.vertices, dtype=dtype), edges, wings


# ---------------------------------------------------------------------------------------- template
def test_template_is_softras_sphere_642():
    t = sphere_template()
    assert t.vertices.shape == (642, 3) and t.faces.shape == (1280, 3) and t.faces.dtype == torch.long
    assert torch.allclose(t.vertices.norm(dim=1), torch.ones(642), atol=1e-6)  # radius 1 as sphere_642.obj
    assert t.edges.shape == (1920, 2) and t.wings.shape == (1920, 4)  # closed: every edge has two faces
    assert trimesh.Trimesh(t.vertices.numpy(), t.faces.numpy(), process=False).is_watertight
    # each wing's opposite vertices are really opposite the edge in two faces
    faces = {tuple(sorted(f)) for f in t.faces.tolist()}
    for v0, v1, v2, v3 in t.wings[:50].tolist():
        assert tuple(sorted((v0, v1, v2))) in faces and tuple(sorted((v0, v1, v3))) in faces


# ---------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_shape_box_and_closed_mesh(encoder):
    torch.manual_seed(0)
    net = SoftRasNet(encoder, image_size=32)
    images = torch.rand(3, 4, 32, 32)
    vertices = net(images)
    assert vertices.shape == (3, 642, 3)
    assert vertices.abs().max() < 0.5  # SoftRas's bounded box [-0.5, 0.5]^3
    mesh = trimesh.Trimesh(vertices[0].detach().numpy(), net.faces.numpy(), process=False)
    assert mesh.is_watertight  # template topology
    code = net.encoder(images)
    assert code.shape == (3, 512) and (code >= 0).all()  # SoftRas's encoder ends with a ReLU


def test_published_encoder_layers():
    enc = make_encoder("baseline", image_size=64)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 64, (5, 5), (2, 2)), (64, 128, (5, 5), (2, 2)), (128, 256, (5, 5), (2, 2))]
    fcs = [(m.in_features, m.out_features) for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert fcs == [(256 * 8 * 8, 1024), (1024, 1024), (1024, 512)]
    net = SoftRasNet()
    dec = [(m.in_features, m.out_features) for m in net.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert dec == [(512, 1024), (1024, 2048), (2048, 3), (2048, 642 * 3)]
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("vgg")


def test_decoder_parametrisation():
    torch.manual_seed(0)
    net = SoftRasNet(image_size=16)
    dec = net.decoder
    code = torch.rand(2, 512)
    with torch.no_grad():  # zero offsets and centroid: the template at obj_scale 0.5, halved
        for layer in (dec.fc_bias, dec.fc_centroid):
            layer.weight.zero_()
            layer.bias.zero_()
        assert torch.allclose(dec(code), 0.25 * net.template.vertices.expand(2, -1, -1), atol=1e-6)
        dec.fc_centroid.bias.fill_(1e3)  # centroid -> +1 corner: positive coordinates squeezed to it
        v = dec(code)
        assert v.max() <= 0.5 and torch.allclose(v.max(dim=1).values, torch.full((2, 3), 0.5))
        dec.fc_centroid.bias.zero_()
        dec.fc_bias.bias.fill_(1e3)  # huge offsets: every non-zero coordinate to the box's face
        v = dec(code)
        sign = torch.sign(net.template.vertices)
        assert torch.allclose(v, 0.5 * sign.expand(2, -1, -1), atol=1e-6)


def test_config_round_trip_and_checks():
    config = NetConfig(encoder="attention", image_size=32)
    from dataclasses import asdict
    import json
    again = NetConfig.from_dict(json.loads(json.dumps(asdict(config))))
    assert again == config and isinstance(again.decoder_hidden, tuple)
    with pytest.raises(ValueError, match="unknown"):
        NetConfig.from_dict({"encoder": "baseline", "colour": True})
    with pytest.raises(ValueError, match="expected images"):
        SoftRasNet(image_size=32)(torch.rand(1, 3, 32, 32))


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    plain, ours = torch.nn.BatchNorm2d(3), GlobalBatchNorm2d(3)
    assert plain.state_dict().keys() == ours.state_dict().keys()
    assert torch.equal(plain(x), ours(x)) and torch.equal(plain.running_var, ours.running_var)
    assert torch.allclose(ours.eval()(x), plain.eval()(x))


# ---------------------------------------------------------------------------------------- losses
def test_silhouette_loss_closed_forms():
    ones = torch.ones(2, 8, 8)
    assert silhouette_loss(ones, ones) == pytest.approx(0.0, abs=1e-6)
    left = torch.zeros(2, 8, 8)
    left[:, :, :4] = 1
    assert silhouette_loss(left, 1 - left) == pytest.approx(1.0)
    assert silhouette_loss(left, ones) == pytest.approx(0.5, abs=1e-6)
    assert soft_iou(0.5 * ones, ones) == pytest.approx([0.5, 0.5], abs=1e-6)  # soft: I = 0.5 N, U = N
    both = torch.stack([ones[0], left[0]])  # per image, then the mean: (1 + 0.5) / 2
    assert silhouette_loss(both, torch.ones(2, 8, 8)) == pytest.approx(0.25, abs=1e-6)


def test_laplacian_closed_form_and_dense_reference():
    v, edges, _ = icosahedron()
    # neighbours of a unit icosahedron vertex average to v / sqrt(5): |L v|^2 = (1 - 1/sqrt 5)^2
    expected = 12 * (1 - 1 / math.sqrt(5)) ** 2
    assert float(laplacian_loss(v[None], edges)) == pytest.approx(expected, rel=1e-12)
    assert float(laplacian_loss(v[None] + torch.tensor([0.3, -1.0, 2.0], dtype=v.dtype), edges)) == \
        pytest.approx(expected, rel=1e-10)  # translation invariant
    t = sphere_template()  # SoftRas builds L = I - D^-1 A as a dense matrix
    A = torch.zeros(642, 642, dtype=torch.float64)
    A[t.edges[:, 0], t.edges[:, 1]] = 1
    A[t.edges[:, 1], t.edges[:, 0]] = 1
    L = torch.eye(642, dtype=torch.float64) - A / A.sum(1, keepdim=True)
    x = torch.randn(2, 642, 3, dtype=torch.float64)
    assert torch.allclose(laplacian_vectors(x, t.edges), L @ x, atol=1e-12)
    assert float(laplacian_loss(x, t.edges)) == pytest.approx(float((L @ x).pow(2).sum((1, 2)).mean()))


def test_flatten_closed_forms():
    v, _, wings = icosahedron()
    # the icosahedron's dihedral angle has cos = -sqrt(5) / 3
    assert torch.allclose(dihedral_cosines(v[None], wings, eps=0.0), torch.full((1, 30), -math.sqrt(5) / 3,
                                                                                 dtype=v.dtype))
    assert float(flatten_loss(v[None], wings, eps=0.0)) == pytest.approx(30 * (1 - math.sqrt(5) / 3) ** 2)
    xs, ys = np.meshgrid(np.linspace(0, 0.3, 5), np.linspace(0, 0.2, 4), indexing="ij")
    flat = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1)
    quads = [(i * 4 + j, (i + 1) * 4 + j, (i + 1) * 4 + j + 1, i * 4 + j + 1) for i in range(4) for j in range(3)]
    faces = np.array([f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))])
    _, flat_wings = mesh_topology(faces)
    assert len(flat_wings) == 43 - 14  # a triangulated 4 x 3 quad grid: 43 edges, 14 on the border
    verts = torch.as_tensor(flat, dtype=torch.float64)[None]
    assert float(flatten_loss(verts, flat_wings, eps=0.0)) == pytest.approx(0.0, abs=1e-20)
    assert float(flatten_loss(verts, flat_wings)) < 1e-3  # SoftRas's eps barely moves it
    folded = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, 1, 1e-9]]], dtype=torch.float64)
    assert float(flatten_loss(folded, torch.tensor([[0, 1, 2, 3]]), eps=0.0)) == pytest.approx(4.0)


def test_gradients_match_finite_differences():
    v, edges, wings = icosahedron()
    torch.manual_seed(0)
    x = (v[None] * torch.tensor([[[0.3]], [[0.4]]], dtype=v.dtype)
         + 0.02 * torch.randn(2, 12, 3, dtype=v.dtype)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: laplacian_loss(p, edges), (x,))
    assert torch.autograd.gradcheck(lambda p: flatten_loss(p, wings), (x,))
    a = torch.rand(2, 5, 5, dtype=torch.float64, requires_grad=True)
    r = torch.rand(2, 5, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: silhouette_loss(p, r), (a,))
