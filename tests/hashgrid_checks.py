"""Shared by the renderer tests: a small float64 hash-grid SDF and a finite-difference check of its
parameter gradients through any renderer loss."""

from collections.abc import Callable

import pytest
import torch

from zerolevel.fields.hashgrid import HashGridEncoding, HashGridSDF


def small_hash_sdf(seed: int = 0) -> HashGridSDF:
    """A 4-level hash-grid SDF (torch backend, float64) near a sphere of radius 0.5, with features
    that matter: the sphere initialisation zeroes the first layer's feature weights, so every
    weight is perturbed."""
    torch.manual_seed(seed)
    encoding = HashGridEncoding(n_levels=4, n_features_per_level=2, log2_hashmap_size=10,
                                base_resolution=4, finest_resolution=32, backend="torch")
    field = HashGridSDF(radius=0.5, hidden_dim=16, encoding=encoding, backend="torch").double()
    with torch.no_grad():
        field.encoding.table.normal_(0.0, 0.05)
        for name, param in field.named_parameters():
            if "weight" in name:
                param.add_(0.02 * torch.randn_like(param))
    return field


def assert_parameter_gradients_match(field: HashGridSDF, loss: Callable[[], torch.Tensor], rel: float,
                                     abs_: float, h: float = 1e-6) -> None:
    """Autograd d(loss)/d(the 3 most affected table entries and two MLP weights) equals central
    differences of `loss`."""
    field.zero_grad()
    loss().backward()
    table = field.encoding.table
    weight = next(p for n, p in field.named_parameters() if "weight" in n)
    assert table.grad.abs().max() > 1e-3  # the loss depends on the table
    touched = table.grad.abs().flatten().topk(3).indices.tolist()
    for param, index in [(table, i) for i in touched] + [(weight, 0), (weight, 5)]:
        analytic = param.grad.flatten()[index].item()
        with torch.no_grad():
            param.view(-1)[index] += h
            up = loss().item()
            param.view(-1)[index] -= 2 * h
            down = loss().item()
            param.view(-1)[index] += h
        assert analytic == pytest.approx((up - down) / (2 * h), rel=rel, abs=abs_)
