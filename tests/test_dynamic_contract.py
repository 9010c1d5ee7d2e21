"""The execution contract (DESIGN §2, PROTOCOL.md §5), checked on every dynamic family of the
registry: one tiny instance per family (its inference-golden case, prepared so that it routes)
on real digits images. `tests/test_goldens.py` checks that every registered family has a case,
so a newly registered dynamic model is covered here without a line of test code."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks.goldens import inference
from benchmarks.registry import get_model_spec
from benchmarks.routing import is_dynamic, set_engine, trace
from tests.test_goldens import CASES_FILE, FIXED_COST_MODELS, PARAMETER_FREE_CONTROLLERS

DYNAMIC_CASES = [c for c in inference.load_cases(CASES_FILE) if get_model_spec(c.model).kind == "dynamic"]


@pytest.fixture(scope="module", params=DYNAMIC_CASES, ids=lambda c: c.name)
def instance(request):
    case = request.param
    images = inference.load_inputs(case)
    return case, inference.build_instance(case, images), images


def _run(model, images, engine):
    set_engine(model, engine)
    with torch.no_grad(), trace(batch_size=len(images)) as t:
        logits = model(images)
    return logits, t


def test_both_engines_give_the_same_predictions_and_decisions(instance):
    case, model, images = instance
    assert is_dynamic(model)
    masked, tm = _run(model, images, "masked")
    sparse, ts = _run(model, images, "sparse")
    assert torch.equal(masked.argmax(1), sparse.argmax(1)), case.name
    assert torch.equal(tm.macs_theoretical, ts.macs_theoretical), case.name  # the same decisions
    torch.testing.assert_close(masked, sparse, rtol=1e-4, atol=1e-4)


def test_the_sparse_engine_executes_what_it_claims_and_routes(instance, monkeypatch):
    case, model, images = instance
    chosen: list[torch.Tensor] = []
    module = sys.modules[type(model).__module__]
    if case.model in FIXED_COST_MODELS:  # record which channels each winner-take-all keeps
        real = module.decide_topk
        monkeypatch.setattr(module, "decide_topk", lambda s, k, unit: chosen.append(real(s, k, unit=unit)) or chosen[-1])
    _, t = _run(model, images, "sparse")
    assert torch.equal(t.macs_executed, t.macs_theoretical), f"{case.name}: simulated savings"
    if case.model in FIXED_COST_MODELS:
        sets = {tuple(torch.cat([c[i] for c in chosen]).tolist()) for i in range(len(images))}
        assert len(sets) > 1, f"{case.name}: every sample kept the same channels"
    else:
        assert len(set(t.macs_executed.tolist())) > 1, f"{case.name}: every sample took the same path"


def test_controllers_are_counted(instance):
    case, model, images = instance
    _, t = _run(model, images, "sparse")
    if case.model in PARAMETER_FREE_CONTROLLERS:
        return
    assert (t.macs_controller > 0).all(), f"{case.name}: a sample's controller MACs are 0"


def test_a_samples_routing_does_not_depend_on_its_batch(instance):
    case, model, images = instance
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    whole, tw = _run(model, images[order], "sparse")
    for i in range(0, len(images), 5):
        one, t1 = _run(model, images[i : i + 1], "sparse")
        j = int((order == i).nonzero())
        assert int(t1.macs_executed[0]) == int(tw.macs_executed[j]), f"{case.name}: sample {i}"
        torch.testing.assert_close(one[0], whole[j], rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic(instance):
    case, model, images = instance
    first, t1 = _run(model, images, "sparse")
    second, t2 = _run(model, images, "sparse")
    assert torch.equal(first, second) and torch.equal(t1.macs_executed, t2.macs_executed), case.name
