"""Dynamic baselines on the execution contract (`benchmarks.routing`). Importing this package
registers their models and training methods: early exit (BranchyNet / SDN)."""

from baselines.dynamic import early_exit, methods  # noqa: F401
