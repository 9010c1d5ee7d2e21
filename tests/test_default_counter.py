"""The default counter is complete: on every registered model family (its inference-golden
case, sparse engine, each image alone) and on timm's transformers (explicit attention paths,
which torch.utils.flop_counter sees), `trace()` without arguments counts exactly
FlopCounterMode's FLOPs / 2. A newly registered family gets a golden case and so this check.
The harness's traces replay the counts of a model's static parts (`trace(cache=, model=)`):
on every family and transformer they report exactly what a trace intercepting every call
reports."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.cost import count_macs
from benchmarks.goldens import inference
from benchmarks.routing import is_dynamic, set_engine, trace
from tests.test_goldens import CASES_FILE
from tests.trace_records import trace_record

CASES = inference.load_cases(CASES_FILE)


def _flop_counter_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    # autograd on: FlopCounterMode's module tracker fails on cait's class-attention under no_grad
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_default_counter_equals_the_flop_counter_on_every_family(case):
    images = inference.load_inputs(case)
    model = inference.build_instance(case, images).eval()  # prepared on the case's whole batch
    if is_dynamic(model):
        set_engine(model, "sparse")
    for i in range(3):
        # one forward pass seen by both (two passes could flip a decision that sits on its
        # threshold: the golden cases are prepared so that they route)
        with torch.no_grad(), trace() as t, FlopCounterMode(display=False) as counter:
            model(images[i : i + 1])
        assert int(t.macs_executed[0]) == counter.get_total_flops() // 2, f"{case.name}, image {i}"


def _assert_replay_counts_what_interception_counts(model: torch.nn.Module, batches: list, label: str) -> None:
    cache: dict = {}
    for i, x in enumerate(batches):
        with torch.no_grad(), trace(cache=cache, model=model) as replayed:
            model(x)
        with torch.no_grad(), trace() as intercepted:
            model(x)
        assert trace_record(replayed) == trace_record(intercepted), f"{label}, batch {i}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_replayed_static_parts_count_the_same_on_every_family(case):
    images = inference.load_inputs(case)
    model = inference.build_instance(case, images).eval()
    if is_dynamic(model):
        set_engine(model, "sparse")
    singles = [images[i : i + 1] for i in range(min(3, len(images)))]
    _assert_replay_counts_what_interception_counts(model, [*singles, images, *singles, images], case.name)


TRANSFORMERS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
                "eva02_tiny_patch14_224", "cait_xxs24_224", "levit_128s"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_the_default_counter_equals_the_flop_counter_on_timm_transformers(name, monkeypatch):
    import timm.layers.config as timm_config

    monkeypatch.setattr(timm_config, "_USE_FUSED_ATTN", 0)  # the explicit attention path: matmuls the flop counter sees
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    assert count_macs(model, x).macs == _flop_counter_macs(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_replayed_static_parts_count_the_same_on_timm_transformers(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    _assert_replay_counts_what_interception_counts(model, [x[:1], x, x[1:], x], name)
