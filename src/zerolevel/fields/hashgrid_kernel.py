"""The compiled CPU kernel of the hash-grid encoding: its build with the system C++ compiler (cached
under `kernel_cache_dir()`), ctypes loading, `compiled_kernel_available`, the choice between it and
the PyTorch reference (`use_compiled`), and the autograd Functions that call it (first and second
derivatives; `encode_compiled`).

The kernel's source is `hashgrid_kernel.cpp` beside this module; the encoding it computes, and what
each backend supports, are described in `hashgrid.py`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Protocol

import torch

__all__ = ["GridLevels", "SUPPORTED_FEATURES", "compiled_kernel_available", "kernel_cache_dir",
           "use_compiled", "encode_compiled"]

SUPPORTED_FEATURES = (1, 2, 4, 8)  # per-level feature counts the compiled kernel is specialised for


class GridLevels(Protocol):
    """What the kernel reads of the level geometry (`hashgrid.GridLevels` provides it)."""

    @property
    def resolutions(self) -> tuple[int, ...]: ...

    @property
    def offsets(self) -> tuple[int, ...]: ...

    @property
    def hashed(self) -> tuple[bool, ...]: ...

    @property
    def n_features(self) -> int: ...

    @property
    def n_levels(self) -> int: ...

    @property
    def table_size(self) -> int: ...

    @property
    def output_dim(self) -> int: ...


@functools.lru_cache(maxsize=64)
def _level_arrays(levels: GridLevels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU int32 resolutions (L,), int64 offsets (L + 1,), int32 hashed flags (L,) for the kernel."""
    return (torch.tensor(levels.resolutions, dtype=torch.int32),
            torch.tensor(levels.offsets, dtype=torch.int64),
            torch.tensor([int(h) for h in levels.hashed], dtype=torch.int32))


# The C++/OpenMP kernel ships beside this module and is compiled by the system compiler on set-up
# or first use (see `_compile_kernel`).
_KERNEL_SOURCE = (Path(__file__).with_name("hashgrid_kernel.cpp")).read_text()

_CXX_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wno-psabi"]
_KERNEL_LOCK = threading.Lock()
_KERNEL: _Kernel | None = None
_KERNEL_ERROR: str | None = None


def kernel_cache_dir() -> Path:
    """Where the compiled kernel is cached: `$ZEROLEVEL_CACHE_DIR`, else `$XDG_CACHE_HOME/zerolevel`,
    else `~/.cache/zerolevel`."""
    if os.environ.get("ZEROLEVEL_CACHE_DIR"):
        return Path(os.environ["ZEROLEVEL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zerolevel"


class _Kernel:
    """ctypes bindings of the compiled library; every method takes CPU float32 contiguous tensors."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib, self.path = lib, path
        p, i64, i32, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint32
        grid = [p, p, p, i32, i32, u32, i32]
        lib.zl_hashgrid_forward.argtypes = [p, i64, p, p] + grid
        lib.zl_hashgrid_backward.argtypes = [p, i64, p, p, p, p] + grid
        lib.zl_hashgrid_backward_backward.argtypes = [p, i64, p, p, p, p, p, p] + grid
        for fn in (lib.zl_hashgrid_forward, lib.zl_hashgrid_backward, lib.zl_hashgrid_backward_backward):
            fn.restype = ctypes.c_int

    @staticmethod
    def _grid(levels: GridLevels) -> list:
        res, offsets, hashed = _level_arrays(levels)
        return [res.data_ptr(), offsets.data_ptr(), hashed.data_ptr(), levels.n_levels,
                levels.n_features, levels.table_size - 1, torch.get_num_threads()]

    @staticmethod
    def _ptr(t: torch.Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    @staticmethod
    def _check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"hash-grid kernel failed (status {status})")

    def forward(self, points: torch.Tensor, table: torch.Tensor, levels: GridLevels) -> torch.Tensor:
        """(N, 3), (R, F) -> (N, L * F)."""
        out = torch.empty(points.shape[0], levels.output_dim, dtype=torch.float32)
        self._check(self.lib.zl_hashgrid_forward(points.data_ptr(), points.shape[0], table.data_ptr(),
                                                 out.data_ptr(), *self._grid(levels)))
        return out

    def backward(self, points: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor,
                 levels: GridLevels, want_points: bool, want_table: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """-> (grad points (N, 3) or None, grad table (R, F) or None)."""
        gx = torch.empty_like(points) if want_points else None
        gt = torch.empty_like(table) if want_table else None
        if want_points or want_table:
            self._check(self.lib.zl_hashgrid_backward(
                points.data_ptr(), points.shape[0], table.data_ptr(), grad_out.data_ptr(),
                self._ptr(gt), self._ptr(gx), *self._grid(levels)))
        return gx, gt

    def backward_backward(self, points: torch.Tensor, table: torch.Tensor, grad_out: torch.Tensor,
                          grad_grad_points: torch.Tensor, levels: GridLevels, want_grad_out: bool,
                          want_table: bool, want_points: bool
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """-> (grad of grad_out (N, L * F), grad table (R, F), grad points (N, 3)), None where not wanted."""
        g_gy = torch.empty_like(grad_out) if want_grad_out else None
        gt = torch.empty_like(table) if want_table else None
        gx = torch.empty_like(points) if want_points else None
        if want_grad_out or want_table or want_points:
            self._check(self.lib.zl_hashgrid_backward_backward(
                points.data_ptr(), points.shape[0], table.data_ptr(), grad_out.data_ptr(),
                grad_grad_points.data_ptr(), self._ptr(g_gy), self._ptr(gt), self._ptr(gx),
                *self._grid(levels)))
        return g_gy, gt, gx


def _compile_kernel() -> _Kernel:
    """Compile the kernel (or reuse the cached build) and load it; RuntimeError says why not."""
    compiler = shlex.split(os.environ.get("CXX", "")) or [
        shutil.which("c++") or shutil.which("g++") or shutil.which("clang++") or ""]
    if not compiler[0]:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    key = hashlib.sha256("\n".join([_KERNEL_SOURCE, *compiler, *_CXX_FLAGS, platform.machine(),
                                    platform.system()]).encode()).hexdigest()[:16]
    cache = kernel_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"zerolevel-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"hashgrid-{key}.so"
    if library.is_file():
        try:
            return _Kernel(ctypes.CDLL(str(library)), library)
        except OSError:  # unreadable build (another platform, a truncated copy): build it again
            library.unlink(missing_ok=True)
    _build_library(compiler, cache, key, library)
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise RuntimeError(f"loading the compiled hash-grid kernel {library} failed: {exc}") from exc
    return _Kernel(lib, library)


def _build_library(compiler: list[str], cache: Path, key: str, library: Path) -> None:
    """Compile `_KERNEL_SOURCE` into `library` (atomically: concurrent builders agree on the result)."""
    tag = f"{os.getpid()}-{threading.get_ident()}"
    source = cache / f"hashgrid-{key}-{tag}.cpp"
    source.write_text(_KERNEL_SOURCE)
    errors = []
    try:
        for openmp in (["-fopenmp"], []):  # without OpenMP (e.g. Apple clang): single-threaded
            partial = cache / f"hashgrid-{key}-{tag}.so"
            cmd = [*compiler, *_CXX_FLAGS, *openmp, str(source), "-o", str(partial)]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{' '.join(cmd)}: {exc}")
                continue
            if run.returncode == 0:
                os.replace(partial, library)
                return
            errors.append(f"{' '.join(cmd)}:\n{run.stderr.strip()[-2000:]}")
            partial.unlink(missing_ok=True)
        raise RuntimeError("compiling the hash-grid kernel failed:\n" + "\n".join(errors))
    finally:
        source.unlink(missing_ok=True)


def _kernel() -> _Kernel:
    """The compiled kernel, built on first use; RuntimeError (cached) if it cannot be built."""
    global _KERNEL, _KERNEL_ERROR
    if _KERNEL is not None:
        return _KERNEL
    with _KERNEL_LOCK:
        if _KERNEL is None and _KERNEL_ERROR is None:
            try:
                _KERNEL = _compile_kernel()
            except RuntimeError as exc:
                _KERNEL_ERROR = str(exc)
        if _KERNEL is None:
            raise RuntimeError(_KERNEL_ERROR)
        return _KERNEL


def compiled_kernel_available() -> bool:
    """True when the compiled CPU kernel builds (or is cached) and loads; builds it if needed."""
    try:
        _kernel()
    except RuntimeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Autograd wiring of the compiled kernel
# ----------------------------------------------------------------------------------------------

class _Encode(torch.autograd.Function):
    """features = encode(points, table); backward through `_EncodeBackward` (twice differentiable)."""

    @staticmethod
    def forward(ctx, points: torch.Tensor, table: torch.Tensor, levels: GridLevels) -> torch.Tensor:
        ctx.levels = levels
        ctx.save_for_backward(points, table)
        return _kernel().forward(points, table, levels)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        points, table = ctx.saved_tensors
        want_points, want_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_points or want_table):
            return None, None, None
        gx, gt = _EncodeBackward.apply(grad_out.contiguous(), points, table, ctx.levels,
                                       want_points, want_table)
        return gx, gt, None


class _EncodeBackward(torch.autograd.Function):
    """(grad points, grad table) = backward(grad_out, points, table); its own backward is the second order."""

    @staticmethod
    def forward(ctx, grad_out: torch.Tensor, points: torch.Tensor, table: torch.Tensor,
                levels: GridLevels, want_points: bool, want_table: bool):
        ctx.levels = levels
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_out, points, table)
        return _kernel().backward(points, table, grad_out, levels, want_points, want_table)

    @staticmethod
    def backward(ctx, grad_grad_points: torch.Tensor | None, grad_grad_table: torch.Tensor | None):
        grad_out, points, table = ctx.saved_tensors
        g_gy, g_x, g_t = _EncodeDoubleBackward.apply(
            grad_grad_points, grad_grad_table, grad_out, points, table, ctx.levels,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        return g_gy, g_x, g_t, None, None, None


class _EncodeDoubleBackward(torch.autograd.Function):
    """Second derivatives of the encoding; differentiating these again raises NotImplementedError."""

    @staticmethod
    def forward(ctx, ggx: torch.Tensor | None, ggt: torch.Tensor | None, grad_out: torch.Tensor,
                points: torch.Tensor, table: torch.Tensor, levels: GridLevels,
                want_grad_out: bool, want_points: bool, want_table: bool):
        kernel = _kernel()
        g_gy = g_x = g_t = None
        if ggx is not None:
            g_gy, g_t, g_x = kernel.backward_backward(points, table, grad_out, ggx.contiguous(), levels,
                                                      want_grad_out, want_table, want_points)
        if ggt is not None:  # the table gradient is linear in grad_out and depends on the points
            ggt = ggt.contiguous()
            if want_grad_out:
                extra = kernel.forward(points, ggt, levels)
                g_gy = extra if g_gy is None else g_gy + extra
            if want_points:
                extra = kernel.backward(points, ggt, grad_out, levels, True, False)[0]
                g_x = extra if g_x is None else g_x + extra
        return g_gy, g_x, g_t

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "third-order derivatives of the compiled hash-grid encoding are not implemented: use "
            "HashGridEncoding(backend='torch') (any order, 15-18x slower on CPU: benchmarks/results/renderers.md), or normals by "
            "finite differences (the 'fd' / 'dfd' gradient modes), which need no second derivative")



# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------

_WARNED_FALLBACK = False


def use_compiled(points: torch.Tensor, table: torch.Tensor, levels: GridLevels, backend: str) -> bool:
    """Whether `hash_encode` runs the kernel for `backend` ("auto", "compiled" or "torch"): "auto"
    falls back to the reference (warning once if the build failed), "compiled" raises instead."""
    if backend == "torch":
        return False
    if backend not in ("auto", "compiled"):
        raise ValueError(f"backend must be 'auto', 'compiled' or 'torch', got {backend!r}")
    reasons = []
    if points.device.type != "cpu" or table.device.type != "cpu":
        reasons.append("the compiled kernel runs on CPU only")
    if points.dtype != torch.float32 or table.dtype != torch.float32:
        reasons.append(f"the compiled kernel takes float32 (got points {points.dtype}, table {table.dtype})")
    if levels.n_features not in SUPPORTED_FEATURES:
        reasons.append(f"the compiled kernel supports {SUPPORTED_FEATURES} features per level, "
                       f"not {levels.n_features}")
    if not reasons:
        try:
            _kernel()
        except RuntimeError as exc:
            if backend == "compiled":
                raise
            global _WARNED_FALLBACK
            if not _WARNED_FALLBACK:
                _WARNED_FALLBACK = True
                warnings.warn("hash-grid encoding falls back to plain PyTorch (15-18x slower on CPU): "
                              f"{exc}", RuntimeWarning, stacklevel=3)
            return False
        return True
    if backend == "compiled":
        raise RuntimeError("backend='compiled' is not possible here: " + "; ".join(reasons))
    return False


def encode_compiled(points: torch.Tensor, table: torch.Tensor, levels: GridLevels) -> torch.Tensor:
    """(N, 3) contiguous CPU float32 points, (R, F) table -> (N, L * F) features by the kernel;
    differentiable twice w.r.t. points and table."""
    return _Encode.apply(points, table, levels)
