"""The hand-written LC-Net of the speed benchmarks (`reference_impls.lcnet.oracle`): `ideal_forward`
decides with the model's own gate heads, `ideal_forward(model, x, decisions)` is the oracle."""

from reference_impls.lcnet.oracle import forward_with_decisions as ideal_forward
from reference_impls.lcnet.oracle import record_decisions

__all__ = ["ideal_forward", "record_decisions"]
