"""Shared writer for benchmark results: one markdown table and one JSON file per benchmark.

Every benchmark table names the data, the command, the date and the machine (DESIGN.md,
evaluation protocol). `write_report` writes `benchmarks/results/<name>.md` and
`benchmarks/results/<name>.json` with exactly that; benchmarks call it once at the end:

    from _report import write_report   # benchmarks/ is on sys.path when a script there runs
    write_report("raycast", "Embree ray casting", "python benchmarks/raycast.py",
                 ["mesh", "faces", "views/s"], [["bunny", 69451, 31.2]],
                 notes="2 threads, median of 3")

This module depends only on the standard library so that any benchmark can import it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """Describe this machine: CPU model (from `lscpu`), CPU counts, platform, Python and torch versions."""
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    info = {
        "cpu_model": model or platform.processor() or "unknown",
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:  # only if the benchmark already imported torch: never import it here just to report it
        import sys
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken torch must not lose the results
        pass
    return info


def source_commit() -> str:
    """The git commit of the code that ran (with "+changes" when the tree differs from it), or
    "unknown" outside a git checkout: a table's rows are reproducible from that commit."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        # the library and the benchmark scripts (not their results, which a run rewrites)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "../src", ".",
                                ":(exclude)results"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


STARTED_FROM = source_commit()  # taken when the benchmark starts, before any later commit


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def previous_invocations(name: str) -> list[dict]:
    """The invocations (command, date) behind an existing results/{name}.json, oldest first, for a
    table that merges a new run into it; [] when there is none."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    return old.get("invocations") or [{"command": old["command"], "date": old["date"]}]


def write_report(name: str, title: str, command: str, columns: list[str], rows: list[list],
                 notes: str = "", earlier: list[dict] | None = None) -> None:
    """Write `benchmarks/results/{name}.md` (a markdown table) and `{name}.json`.

    Args:
        name: file stem, e.g. "raycast".
        title: heading of the markdown page.
        command: the exact command that produced the figures (so anyone can rerun it).
        columns: column headers; each row has one value per column (numbers or strings).
        rows: the table; floats are printed with 4 significant digits in markdown, kept exact in JSON.
        notes: free text (data, thread count, repetitions, caveats) placed under the table.
        earlier: when the table merges rows of earlier runs, their invocations (`previous_invocations`);
            each is listed with its date, this one last, so every row's provenance stays readable.
    """
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} values for {len(columns)} columns")
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    commit = STARTED_FROM
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    lines = [f"# {title}", "",
             f"- date: {date}",
             f"- machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
             f"{machine['cpu_count']} CPUs, {machine['platform']}"
             + (f", GPU {machine['gpu']}" if "gpu" in machine else ""),
             *([f"- earlier run {i + 1}, {run['date']}, code {run.get('commit', 'unknown')}: `{run['command']}`"
                for i, run in enumerate(earlier)] if earlier else []),
             f"- command{' (this run)' if earlier else ''}, code {commit}: `{command}`", "",
             "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    if notes:
        lines += ["", notes.strip()]
    invocations = [*(earlier or []), {"command": command, "date": date, "commit": commit}]
    payload = {"name": name, "title": title, "date": date, "machine": machine, "command": command,
               "commit": commit,
               "invocations": invocations,
               "columns": list(columns), "rows": [list(r) for r in rows], "notes": notes}

    for path, text in ((RESULTS_DIR / f"{name}.md", "\n".join(lines) + "\n"),
                       (RESULTS_DIR / f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a reader never sees half a table


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of `fn()` over `repeats` calls after one warm-up
    call (CPU seconds, summed over threads, are steadier than wall-clock on a shared machine)."""
    import statistics
    import time

    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def limit_threads(n: int) -> None:
    """Cap BLAS / OpenMP threads (unless already set); effective only before numpy / torch load."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
