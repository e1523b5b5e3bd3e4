"""The sample grid of mesh extraction and the counted, chunked evaluation of a field on it.

One job, shared by both extraction paths (`geometry.extract`, dense; `geometry.narrowband`): a
`SampleGrid` is `n` samples per axis spanning `bounds = (lo, hi)` (sample (i, j, k) at
`lo + (i, j, k) * (hi - lo) / (n - 1)`); a `FieldSampler` evaluates a field there under
`torch.no_grad()` (float32 points, float64 for a float64 module; on the given device, else the
module's) and counts the points it passed, so the two paths can be compared.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

Field = Callable[[torch.Tensor], torch.Tensor]
Bounds = Sequence[Sequence[float]] | np.ndarray
DEFAULT_BOUNDS: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))  # working space: the object lies inside the unit sphere


@dataclass(frozen=True)
class SampleGrid:
    """n samples per axis spanning [lo, hi] (float64 3-vectors)."""

    lo: np.ndarray
    hi: np.ndarray
    n: int

    @staticmethod
    def make(resolution: int, bounds: Bounds) -> SampleGrid:
        n = positive_int(resolution, "resolution")
        if n < 2:
            raise ValueError(f"resolution must be at least 2 samples per axis, got {n}")
        lo, hi = bounds_array(bounds)
        return SampleGrid(lo, hi, n)

    @property
    def step(self) -> np.ndarray:
        return (self.hi - self.lo) / (self.n - 1)

    def bounds_list(self) -> list[list[float]]:
        return [self.lo.tolist(), self.hi.tolist()]


class FieldSampler:
    """Evaluates the field on grid samples or arbitrary points, counting the points passed."""

    def __init__(self, field: Field, grid: SampleGrid, device: torch.device | str | None):
        if not callable(field):
            raise TypeError(f"field must be callable (points (N, 3) -> (N,)), got {type(field).__name__}")
        self.field = field
        self.device, self.dtype = _device_and_dtype(field, device)
        self.lo = torch.as_tensor(grid.lo, dtype=self.dtype, device=self.device)
        self.step = torch.as_tensor(grid.step, dtype=self.dtype, device=self.device)
        self.n = grid.n
        self.evaluations = 0

    def at_samples(self, ijk: torch.Tensor) -> np.ndarray:
        """`(N, 3)` integer sample indices (on `self.device`) -> `(N,)` float32 values.

        Both extraction paths compute coordinates with this one expression, so a sample has
        bit-identical coordinates whichever path or chunk evaluates it.
        """
        return self(self.lo + ijk.to(self.dtype) * self.step)

    def at_points(self, points: np.ndarray, chunk_size: int) -> np.ndarray:
        """`(N, 3)` float64 world points -> `(N,)` float64 values, in chunks."""
        out = np.empty(len(points), np.float64)
        for start in range(0, len(points), chunk_size):
            chunk = torch.as_tensor(points[start:start + chunk_size], dtype=self.dtype,
                                    device=self.device)
            out[start:start + len(chunk)] = self(chunk)
        return out

    def __call__(self, points: torch.Tensor) -> np.ndarray:
        count = points.shape[0]
        with torch.no_grad():
            out = self.field(points)
        if not isinstance(out, torch.Tensor) or out.numel() != count or out.ndim not in (1, 2):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"field returned {shape} for {count} points; expected ({count},) or ({count}, 1)")
        out = out.reshape(count)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("field returned non-finite values (NaN or inf); cannot extract a surface")
        self.evaluations += count
        return out.detach().to(torch.float32).cpu().numpy()


def _device_and_dtype(field: Field, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    first = None
    if isinstance(field, torch.nn.Module):
        first = next(itertools.chain(field.parameters(), field.buffers()), None)
    if device is not None:
        device = torch.device(device)
    else:
        device = first.device if first is not None else torch.device("cpu")
    dtype = torch.float64 if first is not None and first.dtype == torch.float64 else torch.float32
    return device, dtype


def sample_dense(sampler: FieldSampler, grid: SampleGrid, chunk_size: int, progress: bool) -> np.ndarray:
    """`(n, n, n)` float32 field values at every sample, `chunk_size` points per field call."""
    n = grid.n
    total = n**3
    values = np.empty(total, np.float32)
    with tqdm(total=total, disable=not progress, desc="marching cubes: field", unit="pt",
              unit_scale=True) as bar:
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            flat = torch.arange(start, stop, device=sampler.device)
            ijk = torch.stack((flat // (n * n), (flat // n) % n, flat % n), dim=1)
            values[start:stop] = sampler.at_samples(ijk)
            bar.update(stop - start)
    return values.reshape(n, n, n)


def bounds_array(bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """`(lo, hi)` as two float64 3-vectors; ValueError unless finite with hi > lo."""
    array = np.asarray(bounds, dtype=np.float64)
    if array.shape != (2, 3) or not np.all(np.isfinite(array)) or not np.all(array[1] > array[0]):
        raise ValueError(f"bounds must be (lo, hi), two finite 3-vectors with hi > lo, got {bounds!r}")
    return array[0].copy(), array[1].copy()


def positive_int(value: int, name: str) -> int:
    """`value` as an int; ValueError naming `name` unless it is a positive integer."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
