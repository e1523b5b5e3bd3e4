"""Hash-grid encoding and SDF (`zerolevel.fields.hashgrid`): the compiled CPU kernel against the torch
reference, the reference against finite differences, level geometry and hashing, and the SDF's
initialisation and fitting."""

from __future__ import annotations

import copy

import pytest
import torch

from zerolevel.fields.analytic import BoxSDF
from zerolevel.fields.hashgrid import (
    HashGridEncoding,
    HashGridLevels,
    HashGridSDF,
    hash_encode,
    vertex_rows,
)
from zerolevel.fields.hashgrid_kernel import compiled_kernel_available

needs_kernel = pytest.mark.skipif(not compiled_kernel_available(),
                                  reason="compiled hash-grid kernel unavailable (no C++ compiler)")

SMALL = dict(n_levels=6, n_features=2, log2_table_size=12, base_resolution=4, finest_resolution=64)


def _points(n: int, seed: int, levels: HashGridLevels) -> torch.Tensor:
    """Random points in and slightly outside the box, plus points on cell boundaries, faces and corners."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 2 - 1
    res = levels.resolutions
    k = n // 8
    # exactly on vertices / faces of some level's cells: u * N integer, u = (x + 1) / 2
    lv = torch.randint(0, len(res), (k,), generator=g)
    n_l = torch.tensor(res, dtype=torch.float32)[lv]
    vert = torch.floor(torch.rand(k, 3, generator=g) * (n_l[:, None] + 1))
    x[:k] = (vert / n_l[:, None]) * 2 - 1
    corners = torch.tensor([[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0) for sz in (-1.0, 1.0)])
    x[k:k + 8] = corners
    x[k + 8:k + 16, 0] = 1.0                                  # on the +x face
    x[k + 16:k + 24] = x[k + 16:k + 24] * 1.2                 # partly outside: clamped axes
    return x


def _table(levels: HashGridLevels, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(levels.n_rows, levels.n_features, generator=g)


def _encode_with_grads(points, table, levels, backend, grad_seed=1):
    x = points.clone().requires_grad_(True)
    t = table.clone().requires_grad_(True)
    y = hash_encode(x, t, levels, backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed))
    gx, gt = torch.autograd.grad(y, (x, t), gy)
    return y.detach(), gx, gt


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------------------------- level geometry

def test_levels_follow_instant_ngp_defaults():
    levels = HashGridEncoding().levels
    assert levels.n_levels == 16 and levels.n_features == 2 and levels.table_size == 2 ** 19
    assert levels.resolutions[0] == 16 and levels.resolutions[-1] == 2048
    ratios = [b / a for a, b in zip(levels.resolutions[:-1], levels.resolutions[1:])]
    assert all(1.3 < r < 1.46 for r in ratios)                # b = 2^(7/15) = 1.38, floor()ed
    assert HashGridEncoding().output_dim == 32
    sn = HashGridEncoding.supernormal().levels
    assert sn.n_levels == 14 and sn.resolutions[0] == 32 and sn.output_dim == 28


def test_coarse_levels_dense_and_distinct_fine_levels_hashed_into_the_table():
    levels = HashGridLevels.build()
    for level, (res, hashed) in enumerate(zip(levels.resolutions, levels.hashed)):
        rows = levels.offsets[level + 1] - levels.offsets[level]
        assert hashed == ((res + 1) ** 3 > levels.table_size)
        assert rows == min((res + 1) ** 3, levels.table_size)
    assert levels.hashed[:5] == (False,) * 5 and all(levels.hashed[5:])
    # dense level: a bijection between the (N + 1)^3 vertices and the level's rows
    level = 2
    side = levels.resolutions[level] + 1
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rows = vertex_rows(grid, levels, level)
    assert torch.equal(torch.sort(rows).values, torch.arange(side ** 3))
    # hashed level: rows inside the table, with collisions once vertices outnumber rows, spread
    # like uniform draws (expected distinct rows T (1 - exp(-M / T)))
    level = 15
    g = torch.Generator().manual_seed(0)
    m = 4 * levels.table_size
    verts = torch.randint(0, levels.resolutions[level] + 1, (m, 3), generator=g)
    rows = vertex_rows(verts, levels, level)
    assert int(rows.min()) >= 0 and int(rows.max()) < levels.table_size
    distinct = rows.unique().numel()
    expected = levels.table_size * (1 - torch.exp(torch.tensor(-m / levels.table_size)).item())
    assert abs(distinct - expected) < 0.01 * expected
    # neighbours along x share a cache line pair (prime 1): row(x+1) = row(x) XOR small
    base = torch.tensor([[10, 20, 30], [11, 20, 30]])
    r = vertex_rows(base, levels, level)
    assert int(r[0] ^ r[1]) < 8


# ------------------------------------------------------------------------ compiled vs reference

@needs_kernel
@pytest.mark.parametrize("config", [dict(), SMALL], ids=["defaults", "small"])
def test_compiled_matches_torch_forward_and_gradients(config):
    levels = HashGridLevels.build(**config)
    x = _points(3000, seed=0, levels=levels)
    table = _table(levels, seed=1)
    y_c, gx_c, gt_c = _encode_with_grads(x, table, levels, "compiled")
    y_t, gx_t, gt_t = _encode_with_grads(x, table, levels, "torch")
    torch.testing.assert_close(y_c, y_t, rtol=0, atol=1e-5)
    _close(gt_c, gt_t)
    _close(gx_c, gx_t, rtol=1e-4, atol=1e-5)
    outside = x.abs() > 1
    assert bool((gx_c[outside] == 0).all())                   # clamped axes carry no gradient


@needs_kernel
@pytest.mark.parametrize("features", [1, 4, 8])
def test_compiled_matches_torch_other_feature_counts(features):
    levels = HashGridLevels.build(**{**SMALL, "n_features": features})
    x = _points(500, seed=2, levels=levels)
    table = _table(levels, seed=3)
    compiled = _encode_with_grads(x, table, levels, "compiled")
    for a, b in zip(compiled, _encode_with_grads(x, table, levels, "torch")):
        _close(a, b, rtol=1e-4)


@needs_kernel
def test_compiled_second_derivatives_match_torch():
    """Eikonal loss on analytic normals (create_graph=True): gradients of every parameter and the points."""
    torch.manual_seed(0)
    enc = HashGridEncoding(**{"n_levels": 8, "log2_hashmap_size": 14, "finest_resolution": 256})
    with torch.no_grad():
        enc.table.normal_(0, 0.1)                             # features that matter
    sdf_c = HashGridSDF(radius=0.5, encoding=enc)
    sdf_t = copy.deepcopy(sdf_c)
    sdf_c.encoding.backend, sdf_t.encoding.backend = "compiled", "torch"
    x0 = _points(1000, seed=4, levels=enc.levels)
    results = []
    for sdf in (sdf_c, sdf_t):
        x = x0.clone().requires_grad_(True)
        d = sdf(x)
        (n,) = torch.autograd.grad(d.sum(), x, create_graph=True)
        loss = ((n.norm(dim=-1) - 1) ** 2).mean() + (n[:, 0] * x[:, 1]).mean()
        params = [x] + [p for name, p in sdf.named_parameters() if name != "layers.2.bias"]
        results.append(torch.autograd.grad(loss, params))         # the output bias has no say on normals
    for a, b in zip(*results):
        _close(a, b, rtol=2e-4, atol=2e-5)


@needs_kernel
def test_compiled_double_backward_through_table_gradient():
    """Second order through the table gradient (its dependence on grad_out and on the points)."""
    levels = HashGridLevels.build(**SMALL)
    x0 = _points(400, seed=5, levels=levels)
    table = _table(levels, seed=6)
    weights = torch.randn(levels.n_rows, levels.n_features, generator=torch.Generator().manual_seed(7))
    results = []
    for backend in ("compiled", "torch"):
        x = x0.clone().requires_grad_(True)
        t = table.clone().requires_grad_(True)
        s = torch.randn(x.shape[0], levels.output_dim, generator=torch.Generator().manual_seed(8))
        s.requires_grad_(True)
        y = hash_encode(x, t, levels, backend)
        gx, gt = torch.autograd.grad(y, (x, t), s, create_graph=True)
        loss = (gt * weights).sum() + (gx ** 2).sum() * 1e-3
        results.append(torch.autograd.grad(loss, (x, t, s)))
    for a, b in zip(*results):
        _close(a, b, rtol=2e-4, atol=2e-5)


@needs_kernel
def test_third_order_derivatives_raise_a_clear_error():
    levels = HashGridLevels.build(**SMALL)
    x = _points(50, seed=9, levels=levels).requires_grad_(True)
    t = _table(levels, seed=10).requires_grad_(True)
    y = hash_encode(x, t, levels, "compiled")
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gxx,) = torch.autograd.grad((gx ** 2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="fd"):
        torch.autograd.grad(gxx.sum(), t)


@needs_kernel
def test_compiled_results_do_not_depend_on_the_thread_count():
    levels = HashGridLevels.build(**{**SMALL, "log2_table_size": 14})
    x = _points(20000, seed=11, levels=levels)
    table = _table(levels, seed=12)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _encode_with_grads(x, table, levels, "compiled")
        torch.set_num_threads(2)
        two = _encode_with_grads(x, table, levels, "compiled")
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------ reference vs finite differences

def test_torch_gradients_match_finite_differences_in_float64():
    levels = HashGridLevels.build(n_levels=3, n_features=2, log2_table_size=7, base_resolution=2,
                                  finest_resolution=8)        # 3^3 and 5^3 dense, 9^3 > 128: hashed
    assert levels.hashed == (False, False, True)
    g = torch.Generator().manual_seed(13)
    x = (torch.rand(40, 3, generator=g, dtype=torch.float64) * 1.8 - 0.9)
    # keep points at least 1e-3 (in cell units) away from every cell boundary, so that the finite
    # differences never straddle a kink
    u = (x + 1) / 2
    frac = torch.stack([(u * r) - torch.floor(u * r) for r in levels.resolutions])
    keep = ((frac > 1e-3) & (frac < 1 - 1e-3)).all(dim=0).all(dim=-1)
    x = x[keep][:12].requires_grad_(True)
    table = torch.randn(levels.n_rows, levels.n_features, generator=g, dtype=torch.float64)
    table.requires_grad_(True)
    fn = lambda p, t: hash_encode(p, t, levels, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x, table), eps=1e-7, atol=1e-5)


# ------------------------------------------------------------------------ module behaviour

def test_backend_selection_and_shapes():
    enc = HashGridEncoding(**{"n_levels": 4, "log2_hashmap_size": 10, "finest_resolution": 32})
    x = torch.rand(2, 5, 3) * 2 - 1
    assert enc(x).shape == (2, 5, 8)
    assert enc(x[:0]).shape == (0, 5, 8) and enc(x.reshape(-1, 3)[:0]).shape == (0, 8)
    y64 = hash_encode(x.double(), enc.table.double(), enc.levels, backend="auto")  # auto: torch path
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), enc(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="backend"):
        hash_encode(x, enc.table, enc.levels, backend="cuda")
    if compiled_kernel_available():
        with pytest.raises(RuntimeError, match="float32"):
            hash_encode(x.double(), enc.table, enc.levels, backend="compiled")
    sdf = HashGridSDF(encoding=enc)
    assert sdf(x).shape == (2, 5)


def test_sdf_starts_as_a_sphere():
    torch.manual_seed(0)
    sdf = HashGridSDF(radius=0.5)
    g = torch.Generator().manual_seed(14)
    x = torch.rand(4000, 3, generator=g) * 2 - 1
    x = x[x.norm(dim=-1) < 1]
    with torch.no_grad():
        err = (sdf(x) - (x.norm(dim=-1) - 0.5)).abs()
    assert float(err.mean()) < 0.05 and float(err.max()) < 0.25
    table_std = float(sdf.encoding.table.detach().std())
    assert 4e-5 < table_std < 7e-5                            # uniform(-1e-4, 1e-4): std 5.8e-5


def test_sdf_fits_a_box():
    torch.manual_seed(0)
    sdf = HashGridSDF(radius=0.5, encoding=HashGridEncoding(n_levels=8, log2_hashmap_size=16,
                                                            finest_resolution=256))
    box = BoxSDF(center=(0.1, 0.0, 0.0), half_size=(0.6, 0.3, 0.45))
    opt = torch.optim.Adam(sdf.parameters(), lr=1e-2, eps=1e-15)
    g = torch.Generator().manual_seed(15)
    losses = []
    for _ in range(200):
        p = torch.rand(2048, 3, generator=g) * 2 - 1
        with torch.no_grad():
            target = box(p)
        loss = (sdf(p) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < 0.1 * losses[0]


def test_weight_norm_keeps_the_initial_function():
    small = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                 finest_resolution=32)
    torch.manual_seed(0)
    plain = HashGridSDF(encoding=HashGridEncoding(**small), hidden_dim=16)
    torch.manual_seed(0)
    normed = HashGridSDF(encoding=HashGridEncoding(**small), hidden_dim=16, weight_norm=True)
    x = torch.rand(200, 3) * 2 - 1
    assert torch.allclose(plain(x), normed(x), atol=1e-6)
    assert any("original0" in name for name, _ in normed.named_parameters())
