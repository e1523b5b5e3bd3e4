"""Mitsuba 3's `sdfgrid` shape (variant `llvm_ad_rgb`) on a 64^3 sphere grid at 256^2: the reference
our sphere tracer is compared with in `renderers.py`.

Optional: needs `pip install mitsuba` and Debian's `libllvm19` (with the system's older LLVM, Dr.Jit's
CPU backend aborts). `run()` returns no rows, with a note, when either is missing.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _scene(mi, resolution: int, grid: int, spp: int, integrator: str):
    x = np.linspace(-1, 1, grid)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    # Mitsuba's sdfgrid stores values z-major: index [z, y, x]
    sdf = (np.sqrt(X**2 + Y**2 + Z**2) - 0.6).astype(np.float32).transpose(2, 1, 0)
    T = mi.ScalarTransform4f
    return mi.load_dict({
        "type": "scene",
        "integrator": {"type": integrator},
        "sensor": {"type": "perspective", "fov": 45,
                   "to_world": T().look_at(origin=[0, 0, 3], target=[0, 0, 0], up=[0, 1, 0]),
                   "film": {"type": "hdrfilm", "width": resolution, "height": resolution,
                            "rfilter": {"type": "box"}},
                   "sampler": {"type": "independent", "sample_count": spp}},
        "shape": {"type": "sdfgrid", "grid": mi.TensorXf(sdf[..., None]),
                  "to_world": T().translate([-1, -1, -1]).scale(2), "bsdf": {"type": "diffuse"}},
        "light": {"type": "directional", "direction": [0, 0, -1]},
    })


def run(threads: int = 2, resolution: int = 256, grid: int = 64, spp: int = 4, repeats: int = 5) -> list[dict]:
    """Forward and forward+backward seconds (median) of Mitsuba rendering an sdfgrid; [] if unavailable."""
    try:
        import drjit as dr
        import mitsuba as mi

        mi.set_variant("llvm_ad_rgb")
    except Exception as exc:  # not installed, or no LLVM >= 19
        print(f"mitsuba unavailable ({type(exc).__name__}: {exc}); skipping")
        return []
    dr.set_thread_count(threads)
    rows = []
    for integrator in ("direct", "direct_projective"):
        scene = _scene(mi, resolution, grid, spp, integrator)
        params = mi.traverse(scene)
        key = "shape.grid"
        forward, backward = [], []
        for i in range(repeats + 1):  # first run compiles the kernels
            t0 = time.perf_counter()
            image = mi.render(scene, params, spp=spp, seed=i)
            dr.eval(image)
            dr.sync_thread()  # Dr.Jit launches kernels asynchronously
            t1 = time.perf_counter()
            coverage = float((np.asarray(image).max(axis=-1) > 0).mean())
            dr.enable_grad(params[key])
            params.update()
            image = mi.render(scene, params, spp=spp, seed=i)
            loss = dr.mean(dr.square(image - 0.5), axis=None)
            dr.backward(loss)
            grad = dr.grad(params[key])
            dr.eval(grad)
            dr.sync_thread()
            t2 = time.perf_counter()
            dr.disable_grad(params[key])
            params.update()
            if i:
                forward.append(t1 - t0)
                backward.append(t2 - t1)
        rows.append({"renderer": f"mitsuba {mi.__version__} sdfgrid ({integrator})",
                     "case": f"{grid}^3 grid, {resolution}^2, {spp} spp",
                     "forward_s": statistics.median(forward),
                     "forward_backward_s": statistics.median(backward),
                     "notes": f"llvm_ad_rgb; fwd+bwd: one differentiable render + backward; "
                              f"image mean {float(np.asarray(image).mean()):.3f} (lit pixels: {coverage:.0%})"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
