"""dynbench: a benchmark and reproducibility suite for dynamic (input-adaptive) networks.

The harness lives here: data and standardized splits, the registry, the execution contract
(`benchmarks.routing`), the cost model (`benchmarks.cost`), latency measurement, the training
engine, results tables, the leaderboard and the `dynbench` command line.
"""

__version__ = "0.1.0"
