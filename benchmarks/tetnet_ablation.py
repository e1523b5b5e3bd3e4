"""Ablations behind the tet-SDF network's training defaults: `singleview_ablation.py` for the tet
network (its default), under the name its earlier results files' commands give.

    python benchmarks/tetnet_ablation.py --variants default carve=w_carve=1 --budget 600
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from singleview_ablation import main  # noqa: E402

if __name__ == "__main__":
    main()
