"""The training engine: one loop for every method in the suite.

A method (`benchmarks.engine.Method` subclass, registered with `@register_method`) provides
its model builder, loss and stages; `Trainer` owns seeding, determinism, progress, metric
logs, atomic per-epoch checkpoints, resume, selection on `val`, AMP/channels_last on CUDA and
DDP through torchrun.
"""

from benchmarks.engine.checkpoint import build_from_checkpoint, load_weights, save_weights
from benchmarks.engine.loop import Trainer, load_selected_model, seed_everything
from benchmarks.engine.method import Method, Stage, StepContext, get_method, register_method

__all__ = [
    "Method",
    "Stage",
    "StepContext",
    "Trainer",
    "build_from_checkpoint",
    "get_method",
    "load_selected_model",
    "load_weights",
    "register_method",
    "save_weights",
    "seed_everything",
]
