"""D2NN (Liu & Deng, AAAI 2018): general graph, learning rules, the four designs with their
static baselines, and the training method. Importing this package registers them."""

from reference_impls.d2nn import designs, method  # noqa: F401
from reference_impls.d2nn.graph import D2NN, D2NNGraph, D2NNGraphError, DataEdge, Gate, GraphRun

__all__ = ["D2NN", "D2NNGraph", "D2NNGraphError", "DataEdge", "Gate", "GraphRun"]
