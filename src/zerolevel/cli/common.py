"""What every verb shares: the common options, the thread set-up, the positive-number checks."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ..errors import InputError

STARTED = time.perf_counter()  # a budget (`fit --budget`) counts the whole command's time from here


def default_threads() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_torch(threads: int, seed: int) -> None:
    """Set torch's intra- and inter-op threads once, before any work, and seed every generator."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set (e.g. when main() runs twice in one process, as in tests)
        pass
    torch.manual_seed(seed)
    np.random.seed(seed)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for torch (default: the CPUs this process may use)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
