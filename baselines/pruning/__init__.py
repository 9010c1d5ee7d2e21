"""Pruning baselines: L1-norm filter pruning, network slimming, global magnitude pruning.

Importing this package registers the Table 1 pruned architectures (kind "pruned") and the
training methods `l1_filter`, `network_slimming` and `magnitude`.
"""

from baselines.pruning import l1_filter, magnitude, methods, slimming, surgery  # noqa: F401
from baselines.pruning.l1_filter import L1PruneSpec, l1_mask, l1_prune
from baselines.pruning.magnitude import SparseCost, magnitude_prune, sparse_cost
from baselines.pruning.slimming import bn_l1_penalty, slim_mask, slim_prune

__all__ = [
    "L1PruneSpec",
    "SparseCost",
    "bn_l1_penalty",
    "l1_mask",
    "l1_prune",
    "magnitude_prune",
    "slim_mask",
    "slim_prune",
    "sparse_cost",
]
