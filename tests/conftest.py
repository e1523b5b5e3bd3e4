"""Shared test set-up: import the package from src/ even when it is not installed, and find shared data."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared test helpers (hashgrid_checks)
