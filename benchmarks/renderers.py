"""Renderer speed, forward and forward+backward, side by side in one run: one table.

Each `renderers_<name>.py` beside this file exposes `run(threads) -> list[dict]` (keys `renderer`,
`case`, `forward_s`, `forward_backward_s`, `notes`, and any others, folded into the notes); this
script runs them all in one process with the same thread count and writes
`results/renderers.md` and `.json`. Optional references (Mitsuba 3) add rows where installed.

    python benchmarks/renderers.py [--threads 2] [--only spheretrace volume ...]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _report import write_report  # noqa: E402

PARTS = ["spheretrace", "mitsuba", "volume", "hashgrid", "raster", "softras"]
# Published CPU figures of PyTorch3D measured on this project's machines (issue 3), for ratios:
PYTORCH3D_REFERENCE = {
    "raster 20k faces 256^2": ("PyTorch3D CPU rasteriser, 20k faces, 256^2", 6.4),
    "softras 20k faces 256^2": ("PyTorch3D CPU soft rasteriser fwd+bwd, 20k faces, 256^2", 28.0),
}
COLUMNS = ["renderer", "case", "forward s", "forward+backward s", "notes"]
KNOWN = {"renderer", "case", "forward_s", "forward_backward_s", "notes"}


def _fmt(value) -> str | float:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return round(value, 4) if value < 10 else round(value, 1)
    return value


def _normalise(part: str, row: dict) -> dict:
    """Map the few part-specific row layouts onto the common keys."""
    row = dict(row)
    for old, new in (("forward s", "forward_s"), ("forward+backward s", "forward_backward_s")):
        if old in row:
            row[new] = row.pop(old)
    if part == "hashgrid":
        seconds, rate = row.pop("seconds"), row.pop("points_per_s")
        row["renderer"] = f"hash encoding ({row.pop('backend')})"
        row["case"] = f"{row.pop('op')}, {row.pop('points')} points"
        row["forward_s"] = seconds.get("forward")
        row["forward_backward_s"] = seconds.get("forward_backward", seconds.get("step"))
        if isinstance(rate, dict):
            row["points/s"] = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in rate.items())
        if "forward_backward_points" in seconds:
            row["fwd+bwd incl. point gradients s"] = seconds["forward_backward_points"]
        row.pop("threads", None)
    return row


def _row(part: str, row: dict) -> list:
    row = _normalise(part, row)
    extra = "; ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in KNOWN)
    notes = "; ".join(x for x in (row.get("notes", ""), extra) if x)
    return [row.get("renderer", part), row.get("case", ""), _fmt(row.get("forward_s")),
            _fmt(row.get("forward_backward_s")), notes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, skipped = [], []
    for part in args.only:
        try:
            module = importlib.import_module(f"renderers_{part}")
        except ImportError as exc:
            skipped.append(f"{part} ({exc})")
            continue
        start = time.perf_counter()
        part_rows = module.run(threads=args.threads)
        print(f"{part}: {len(part_rows)} rows in {time.perf_counter() - start:.1f} s", flush=True)
        rows += [_row(part, r) for r in part_rows]
        if not part_rows:
            skipped.append(f"{part} (unavailable here)")
    for name, (label, seconds) in PYTORCH3D_REFERENCE.items():
        rows.append([label, name, "-", seconds, "reference figure quoted in issue 3, not measured in this run"])
    notes = (f"Wall-clock seconds, median of repeated runs, torch {torch.__version__} with {args.threads} "
             f"threads. Skipped: {', '.join(skipped) or 'none'}.")
    command = "python benchmarks/renderers.py " + " ".join(sys.argv[1:])
    write_report("renderers", "Differentiable renderers: forward and forward+backward time",
                 command.strip(), COLUMNS, rows, notes=notes)


if __name__ == "__main__":
    main()
