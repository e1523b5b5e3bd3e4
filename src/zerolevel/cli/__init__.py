"""The `zerolevel` command line: one entry point, one verb per job.

Each verb parses its options, sets the thread count once, and calls library functions; bad input
surfaces as `InputError` and becomes one line on stderr with exit code 2. The verbs live in
`scenes` (render, import, fit, extract, info, eval, demo) and `learning` (dataset, train, predict,
predict-normals, eval-set); `common` holds the options they share.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# numpy's OpenBLAS threads fight torch's for the same cores and make small products many times
# slower (seen in the ray caster); the heavy numeric work here is torch's or Embree's.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ..errors import InputError  # noqa: E402
from . import learning, scenes  # noqa: E402
from .common import configure_torch  # noqa: E402

VERBS = {**scenes.VERBS, **learning.VERBS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerolevel",
        description="Surfaces (signed distance fields and watertight meshes) from 2D observations.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    formatter = argparse.RawDescriptionHelpFormatter
    scenes.add_parsers(sub, formatter)
    learning.add_parsers(sub, formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.threads <= 0:
        print("zerolevel: error: --threads must be positive", file=sys.stderr)
        return 2
    configure_torch(args.threads, 0 if args.seed is None else args.seed)  # None: train --resume keeps its own
    from ..optim.loop import DivergedError

    start = time.perf_counter()
    try:
        VERBS[args.verb](args)
    except InputError as exc:
        print(f"zerolevel {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:  # not bad input: the optimisation failed; say so in one line
        print(f"zerolevel {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"zerolevel {args.verb}: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

