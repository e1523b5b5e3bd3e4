"""Speed of the hash-grid encoding (`zerolevel.fields.hashgrid`): points per second, CPU.

Forward and forward + backward of the Instant-NGP encoding (16 levels x 2 features, 2^19 rows per
level, resolutions 16..2048) on 262,144 points, for the plain-PyTorch reference (`backend="torch"`)
and the compiled kernel (`backend="compiled"`) side by side, and for reference trilinear
`grid_sample` on a dense 128^3 grid (one channel). Backward is w.r.t. the table (grid) only, and
w.r.t. table and points (what analytic normals need). Also: the compiled encoding on ray-ordered
samples (4096 rays x 64 samples through the unit sphere: a renderer's order), the whole
`HashGridSDF` (encoding + 2 x 64 softplus MLP), the same with analytic normals and an eikonal loss
(second derivatives of the encoding), and one Adam step over the 12.2M table parameters, which a
training iteration pays whatever its batch.

Points are uniform in [-1, 1]^3 unless the row says otherwise; each figure is the median of a few
runs after a warm-up, variants interleaved. The lead aggregates `run()` into `benchmarks/renderers.py`.

    python benchmarks/renderers_hashgrid.py                # 2 threads
    python benchmarks/renderers_hashgrid.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_POINTS = 262_144


def _median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each callable; one warm-up call each, then the variants interleaved."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(threads: int = 2, repeats: int = 3) -> list[dict]:
    """Benchmark rows (dicts): op, backend, points, threads, seconds and points/s for forward,
    forward + backward (table) and forward + backward (table and points), and speed-up vs torch."""
    import torch
    import torch.nn.functional as nnf

    try:
        import zerolevel  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
    from zerolevel.fields.hashgrid import HashGridEncoding, HashGridSDF
    from zerolevel.fields.hashgrid_kernel import compiled_kernel_available

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        points = torch.rand(N_POINTS, 3, generator=g) * 2 - 1
        # ray-ordered samples: 4096 rays from a sphere of radius 3 towards the origin, 64 samples in [2, 4]
        origins = torch.randn(4096, 3, generator=g)
        origins = 3 * origins / origins.norm(dim=-1, keepdim=True)
        dirs = -origins / 3 + 0.1 * torch.randn(4096, 3, generator=g)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        depth = torch.linspace(2, 4, 64)
        rays = (origins[:, None] + depth[None, :, None] * dirs[:, None]).reshape(-1, 3)
        rays = rays.clamp(-1, 1).contiguous()

        torch.manual_seed(0)
        enc = HashGridEncoding()
        backends = ["torch"] + (["compiled"] if compiled_kernel_available() else [])
        rows = []

        def encoding_cases(x: torch.Tensor, backend: str) -> dict[str, Callable[[], object]]:
            def fwd() -> None:
                with torch.no_grad():
                    enc(x)

            def fwd_bwd() -> None:
                enc.table.grad = None
                enc(x).sum().backward()

            def fwd_bwd_points() -> None:
                enc.table.grad = None
                xr = x.detach().requires_grad_(True)
                enc(xr).sum().backward()

            def tagged(fn: Callable[[], None]) -> Callable[[], None]:
                def call() -> None:
                    enc.backend = backend
                    fn()
                return call
            return {"forward": tagged(fwd), "forward_backward": tagged(fwd_bwd),
                    "forward_backward_points": tagged(fwd_bwd_points)}

        measured: dict[tuple[str, str], dict[str, float]] = {}
        fns = {}
        for backend in backends:
            for mode, fn in encoding_cases(points, backend).items():
                fns[f"{backend}|{mode}"] = fn
        for name, sec in _median_seconds(fns, repeats).items():
            backend, mode = name.split("|")
            measured.setdefault(("uniform", backend), {})[mode] = sec
        if "compiled" in backends:
            fns = {f"compiled|{mode}": fn for mode, fn in encoding_cases(rays, "compiled").items()}
            sec = _median_seconds(fns, repeats)
            measured[("rays", "compiled")] = {name.split("|")[1]: s for name, s in sec.items()}

        op = "hash encoding 16 levels x 2, 2^19 rows"
        for (points_kind, backend), sec in measured.items():
            row = _row(f"{op} ({'ray samples' if points_kind == 'rays' else 'uniform points'})", backend,
                       N_POINTS, threads, sec)
            ref = measured.get(("uniform", "torch"))
            if ref and points_kind == "uniform":
                row["speedup_vs_torch"] = {m: round(ref[m] / sec[m], 1) for m in sec}
            rows.append(row)

        # dense 128^3 trilinear grid_sample, one channel, for reference
        grid = (torch.randn(1, 1, 128, 128, 128, generator=g) * 0.1).requires_grad_(True)
        coords = points.view(1, 1, 1, N_POINTS, 3)

        def gs_fwd() -> None:
            with torch.no_grad():
                nnf.grid_sample(grid, coords, mode="bilinear", align_corners=True)

        def gs_fwd_bwd() -> None:
            grid.grad = None
            nnf.grid_sample(grid, coords, mode="bilinear", align_corners=True).sum().backward()

        def gs_fwd_bwd_points() -> None:
            grid.grad = None
            c = coords.detach().requires_grad_(True)
            nnf.grid_sample(grid, c, mode="bilinear", align_corners=True).sum().backward()

        sec = _median_seconds({"forward": gs_fwd, "forward_backward": gs_fwd_bwd,
                               "forward_backward_points": gs_fwd_bwd_points}, repeats)
        rows.append(_row("grid_sample trilinear, dense 128^3 x 1 channel (uniform points)", "torch",
                         N_POINTS, threads, sec))

        # the whole field: encoding + MLP
        sdf = HashGridSDF(radius=0.5, encoding=enc)
        for backend in backends:
            def sdf_fwd() -> None:
                enc.backend = backend
                with torch.no_grad():
                    sdf(points)

            def sdf_fwd_bwd() -> None:
                enc.backend = backend
                sdf.zero_grad(set_to_none=True)
                sdf(points).sum().backward()

            def sdf_fwd_bwd_points() -> None:
                enc.backend = backend
                sdf.zero_grad(set_to_none=True)
                sdf(points.detach().requires_grad_(True)).sum().backward()

            sec = _median_seconds({"forward": sdf_fwd, "forward_backward": sdf_fwd_bwd,
                                   "forward_backward_points": sdf_fwd_bwd_points}, repeats)
            rows.append(_row("HashGridSDF: encoding + MLP 2 x 64 softplus (uniform points)", backend,
                             N_POINTS, threads, sec))

        # analytic normals + eikonal loss: the encoding's second derivatives (create_graph=True)
        if "compiled" in backends:
            def eikonal() -> None:
                enc.backend = "compiled"
                sdf.zero_grad(set_to_none=True)
                x = points.detach().requires_grad_(True)
                d = sdf(x)
                (normals,) = torch.autograd.grad(d.sum(), x, create_graph=True)
                (((normals.norm(dim=-1) - 1) ** 2).mean() + d.abs().mean()).backward()

            sec = _median_seconds({"forward_backward": eikonal}, repeats)
            rows.append(_row("HashGridSDF: analytic normals + eikonal loss, backward (double backward)",
                             "compiled", N_POINTS, threads, sec))

        # one Adam step over the encoding's table (dense gradient, every row updated)
        opt = torch.optim.Adam([enc.table], lr=1e-2, eps=1e-15)
        enc.table.grad = torch.zeros_like(enc.table)
        sec = _median_seconds({"step": opt.step}, repeats)["step"]
        rows.append({"op": f"Adam step on the table ({enc.table.numel() / 1e6:.1f}M parameters)",
                     "backend": "torch", "points": None, "threads": threads,
                     "seconds": {"step": round(sec, 4)}, "points_per_s": None})
        return rows
    finally:
        torch.set_num_threads(before)


def _row(op: str, backend: str, points: int, threads: int, sec: dict[str, float]) -> dict:
    return {"op": op, "backend": backend, "points": points, "threads": threads,
            "seconds": {m: round(s, 4) for m, s in sec.items()},
            "points_per_s": {m: round(points / s) for m, s in sec.items()}}


def _print(rows: list[dict]) -> None:
    modes = ["forward", "forward_backward", "forward_backward_points"]
    head = f"{'op':72s} {'backend':9s} " + " ".join(f"{m + ' pts/s':>30s}" for m in modes)
    print(head)
    print("-" * len(head))
    for row in rows:
        if row["points_per_s"] is None:
            print(f"{row['op']:72s} {row['backend']:9s} {row['seconds']}")
            continue
        cells = []
        for m in modes:
            rate = row["points_per_s"].get(m)
            ratio = row.get("speedup_vs_torch", {}).get(m)
            text = "-" if rate is None else f"{rate / 1e6:.3f}M"
            if rate is not None and ratio and row["backend"] != "torch":
                text += f" (x{ratio})"
            cells.append(f"{text:>30s}")
        print(f"{row['op']:72s} {row['backend']:9s} " + " ".join(cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    rows = run(args.threads, args.repeats)
    _print(rows)


if __name__ == "__main__":
    main()
