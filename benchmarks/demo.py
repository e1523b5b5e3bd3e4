"""The demo's own figures: `zerolevel demo` (the bundled Spot cow, 32 views at 256^2, the default fit
with a 30 s budget, extraction at 256^3) run end to end, `--repeats` times; the quality of each run
against the ground truth and its times. The fit's schedule follows the clock, so the iterations and
the quality vary a little run to run, as the times do (quote medians). Writes results/demo.md and .json.

    python benchmarks/demo.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _report import write_report  # noqa: E402

COLUMNS = ["run", "iterations", "fit s", "extraction s", "demo wall s", "chamfer", "F@0.5%", "F@0.25%",
           "normal consistency", "silhouette IoU mean", "silhouette IoU min"]


def one_demo(threads: int) -> list:
    """Run the demo in a fresh folder; (iterations, seconds, metrics) from the files it wrote."""
    import torch

    from zerolevel.pipeline import run_demo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        t0 = time.perf_counter()
        metrics = run_demo(out, progress=False)
        wall = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
    ious = summary["silhouette_iou"]
    return [summary["iterations"], summary["seconds"], summary["extraction_seconds"], round(wall, 1),
            round(metrics["chamfer"], 6), round(metrics["fscore"]["0.005"], 4), round(metrics["fscore"]["0.0025"], 4),
            round(metrics["normal_consistency"], 4), ious["mean"], ious["min"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [[i + 1, *one_demo(args.threads)] for i in range(args.repeats)]
    med = {name: statistics.median(r[COLUMNS.index(name)] for r in rows)
           for name in ("fit s", "extraction s", "demo wall s")}
    write_report("demo", "The demo (`zerolevel demo`): quality and time on the bundled Spot cow",
                 "python benchmarks/demo.py " + " ".join(sys.argv[1:]), COLUMNS, rows,
                 notes=(f"{args.threads} torch threads; the demo renders 32 views at 256^2 (normals, masks, "
                        f"depth, shading), fits them with the default method (`dense`) in a 30 s budget, "
                        f"extracts at 256^3 and scores "
                        f"against the bundled mesh (DESIGN.md's protocol: tau in fractions of the GT "
                        f"bounding-box diagonal). Medians over {args.repeats} runs: fit {med['fit s']:.1f} s, "
                        f"extraction {med['extraction s']:.1f} s, whole demo {med['demo wall s']:.1f} s "
                        f"(rendering, fit, extraction, evaluation, report)."))


if __name__ == "__main__":
    main()
