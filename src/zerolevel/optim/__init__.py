"""The engine every method and network shares: one optimisation loop (`loop`) and the process group
it may run in (`distributed`)."""

from .distributed import Distributed
from .loop import CHECKPOINT, LOG, DivergedError, Hooks, LoopConfig, LoopResult, load_checkpoint, read_log, run_loop

__all__ = ["CHECKPOINT", "LOG", "Distributed", "DivergedError", "Hooks", "LoopConfig", "LoopResult",
           "load_checkpoint", "read_log", "run_loop"]
