"""Dynamic baselines on the execution contract (`benchmarks.routing`). Importing this package
registers their models and training methods: early exit (BranchyNet / SDN), SkipNet, BlockDrop,
ConvNet-AIG and FBS."""

from baselines.dynamic import blockdrop, convnet_aig, early_exit, fbs, methods, skipnet  # noqa: F401
