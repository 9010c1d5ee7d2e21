"""LC-Net reference implementation: the execution contract (engines agree, batch invariance,
real skipping), the cost model (per-sample MACs against an independent counter, expected cost
against executed cost), and structure rules (its inference goldens live in results/expected/inference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.data import load_split
from benchmarks.registry import create_model, get_model_spec, list_models
from benchmarks.routing import GatedConv2d, set_engine, trace
from reference_impls.lcnet.model import MODES, LCNet, straight_through

BACKBONES = ("cifar_resnet20", "cifar_resnet56", "cifar_resnet110", "resnet18", "resnet34", "resnet50")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Real evaluation inputs (never random tensors for a dynamic model's cost)."""
    return load_split("digits", "test").images[:16]


def _mixed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and gate heads that read their input, as after training (a
    fresh head's last layer is zero: it gives every sample the same value)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.heads() if isinstance(model, LCNet) else []:
            bound = head[2].in_features ** -0.5
            head[2].weight.copy_((torch.rand(head[2].weight.shape, generator=generator) * 2 - 1) * bound)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 1.5 + 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) * 0.2 - 0.1)
    return model.eval()


@torch.no_grad()
def _calibrate(model: LCNet, x: torch.Tensor, passes: int = 2) -> LCNet:
    """Centre every gate on real data (each output's pre-activation midpoint between its two
    middle values moves to 0, the 0.5 threshold), so that the samples of a batch take
    different paths and none sits exactly on a threshold."""
    set_engine(model, "masked")
    heads = model.heads()
    seen: dict[int, torch.Tensor] = {}
    for _ in range(passes):
        seen.clear()
        handles = [
            h[2].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
            for i, h in enumerate(heads)
        ]
        model(x)
        for handle in handles:
            handle.remove()
        for i, head in enumerate(heads):
            ordered = seen[i].sort(0).values
            n = ordered.shape[0]
            head[2].bias.sub_((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)
    return model


def lcnet(mode: str, backbone: str = "cifar_resnet20", seed: int = 0, **kwargs) -> LCNet:
    torch.manual_seed(seed)
    kwargs.setdefault("in_chans", 1)
    model = _mixed(create_model(f"lcnet_{mode}_{backbone}", num_classes=10, **kwargs), seed)
    return _calibrate(model, load_split("digits", "val").images[:32])


def _run(model: nn.Module, x: torch.Tensor, engine: str):
    set_engine(model, engine)
    with torch.no_grad(), trace() as t:
        logits = model(x)
    return logits, t


# --- registry ---------------------------------------------------------------------------------


def test_every_variant_is_registered():
    names = set(list_models("lcnet_*"))
    for backbone in BACKBONES:
        for mode in MODES:
            spec = get_model_spec(f"lcnet_{mode}_{backbone}")
            assert spec.kind == "dynamic" and "Xia" in spec.paper
    assert len(names) == len(BACKBONES) * len(MODES)


# --- execution contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_masked_and_sparse_engines_agree(mode, digits):
    model = lcnet(mode)
    masked, tm = _run(model, digits, "masked")
    sparse, ts = _run(model, digits, "sparse")
    assert torch.equal(masked.argmax(1), sparse.argmax(1))
    torch.testing.assert_close(masked, sparse, rtol=1e-4, atol=1e-5)
    assert tm.units_executed.keys() == ts.units_executed.keys()
    for unit, runs in ts.units_executed.items():
        assert torch.equal(runs, tm.units_executed[unit]), unit
    # a unit no sample ran has no record in the sparse engine; in the masked one it kept 0
    zeros = torch.zeros(len(digits), dtype=torch.int64)
    for unit in tm.channels_kept.keys() | ts.channels_kept.keys():
        assert torch.equal(ts.channels_kept.get(unit, zeros), tm.channels_kept.get(unit, zeros)), unit
    # the sparse engine executes exactly what the masked engine says is theoretical
    assert torch.equal(ts.macs_executed, tm.macs_theoretical)
    assert torch.equal(ts.macs_executed, ts.macs_theoretical)
    assert (tm.macs_executed > ts.macs_executed).all()  # the masked engine computes everything
    # and the test is not vacuous: decisions differ between samples
    if "l" in mode:
        assert any(0 < int(r.sum()) < len(digits) for r in ts.units_executed.values())
    if "c" in mode:
        assert any(len(set(k.tolist())) > 1 for k in ts.channels_kept.values())


@pytest.mark.parametrize("mode", MODES)
def test_batch_invariance(mode, digits):
    model = set_engine(lcnet(mode), "sparse")
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))
    shuffled, tb = _run(model, digits[order], "sparse")
    for position, i in enumerate(order.tolist()[:5]):
        single, t1 = _run(model, digits[i : i + 1], "sparse")
        torch.testing.assert_close(single[0], shuffled[position], rtol=1e-4, atol=1e-5)
        assert int(t1.macs_executed[0]) == int(tb.macs_executed[position])
        for unit, runs in t1.units_executed.items():
            assert int(runs[0]) == int(tb.units_executed[unit][position]), unit
        for unit, kept in t1.channels_kept.items():
            assert int(kept[0]) == int(tb.channels_kept[unit][position]), unit


@pytest.mark.parametrize("mode", ["l", "lc"])
def test_downsampling_blocks_always_run(mode, digits):
    model = lcnet(mode)
    with torch.no_grad():  # every L-Net head says "skip"
        for block in model.blocks:
            if block.lnet is not None:
                block.lnet[2].weight.zero_()
                block.lnet[2].bias.fill_(-50.0)
    downsampling = [b for b in model.blocks if b.downsample]
    assert len(downsampling) == 2 and all(b.lnet is None for b in downsampling)
    assert all(b.lnet is not None for b in model.blocks if not b.downsample)
    ran = []
    for block in downsampling:
        block.register_forward_hook(lambda m, args, out: ran.append(args[0].shape[0]))
    _, t = _run(model, digits, "sparse")
    assert ran == [len(digits)] * 2  # both downsampling blocks ran on every sample
    assert all(int(r.sum()) == 0 for r in t.units_executed.values())  # every gated block skipped
    # what ran: the stem, the two downsampling blocks, the classifier and the heads
    x_hw = (digits.shape[-2], digits.shape[-1])
    fixed, sizes = model._fixed_macs(x_hw)
    expected = fixed + sum(b.full_macs(hw) for b, hw in zip(model.blocks, sizes, strict=True) if b.downsample)
    if mode == "lc":  # C-Net still gates the downsampling blocks: count what it kept
        set_engine(model, "masked")
        with torch.no_grad():
            model(digits)
        expected = model.expected_macs("hard").long()
    else:
        expected = expected + sum(b.lnet.macs for b in model.blocks if b.lnet is not None)
    assert torch.equal(t.macs_executed, torch.as_tensor(expected).expand(len(digits)))


@pytest.mark.parametrize("mode", ["c", "lc"])
def test_the_residual_feeding_conv_is_never_gated(mode, digits):
    model = lcnet(mode, backbone="cifar_resnet20")
    calls: dict[str, list] = {}

    def record(name):
        def hook(module, args, kwargs):
            gate = kwargs.get("gate", args[1] if len(args) > 1 else None)
            in_mask = kwargs.get("in_mask", args[2] if len(args) > 2 else None)
            calls.setdefault(name, []).append((gate is not None, in_mask is not None))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, GatedConv2d):
            m.register_forward_pre_hook(record(name), with_kwargs=True)
    _, t = _run(model, digits, "sparse")
    assert calls
    for name, seen in calls.items():
        if name.endswith("conv1"):
            assert all(g and not i for g, i in seen), name  # output channels gated
        else:
            assert name.endswith("conv2")
            assert all(not g and i for g, i in seen), name  # input channels only
    assert all(unit.endswith("conv1") for unit in t.channels_kept)


@pytest.mark.slow
def test_bottleneck_gates_conv1_only_and_engines_agree():
    """torchvision ResNet-50: C-Net gates conv1's output (conv2's input); conv3 never."""
    torch.manual_seed(0)
    images = load_split("digits", "test").images[:6]
    x = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear").repeat(1, 3, 1, 1)
    model = _mixed(create_model("lcnet_lc_resnet50", num_classes=10))
    _calibrate(model, x)
    assert all(b.conv3 is not None for b in model.blocks)
    masked, tm = _run(model, x, "masked")
    sparse, ts = _run(model, x, "sparse")
    assert torch.equal(masked.argmax(1), sparse.argmax(1))
    for unit, runs in ts.units_executed.items():
        assert torch.equal(runs, tm.units_executed[unit]), unit
    assert torch.equal(ts.macs_executed, tm.macs_theoretical)
    assert all(unit.endswith("conv1") for unit in ts.channels_kept)
    set_engine(model, "masked")
    with torch.no_grad():
        model(x)
    assert torch.equal(model.expected_macs("hard").long(), ts.macs_executed)


# --- cost -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_per_sample_macs_equal_an_independent_count(mode, digits):
    """Sparse engine, batch 1: the trace's MACs equal torch.utils.flop_counter's FLOPs / 2."""
    model = set_engine(lcnet(mode), "sparse")
    seen = set()
    for i in range(4):
        x = digits[i : i + 1]
        with torch.no_grad(), trace() as t:
            model(x)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        assert counter.get_total_flops() % 2 == 0
        assert int(t.macs_executed[0]) == counter.get_total_flops() // 2
        seen.add(int(t.macs_executed[0]))
    assert len(seen) > 1  # the samples really cost different amounts


def test_full_macs_equal_the_static_count():
    """The analytic backbone cost behind the cost term equals benchmarks.cost's count of the
    static network (ResNet-20 on a padded 1×32×32 image; ResNet-50 at 3×64×64)."""
    from benchmarks.cost import count_macs

    for backbone, shape in (("cifar_resnet20", (1, 32, 32)), ("resnet50", (3, 64, 64))):
        plain = create_model(backbone, num_classes=10, in_chans=shape[0])
        net = create_model(f"lcnet_lc_{backbone}", num_classes=10, in_chans=shape[0])
        assert net.full_macs(shape[1:]) == count_macs(plain, shape).macs, backbone


@pytest.mark.parametrize("mode", MODES)
def test_expected_macs_equal_executed_macs_for_hard_gates(mode, digits):
    """With 0/1 gate values, the differentiable expected cost equals the executed cost."""
    model = lcnet(mode)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # saturate every head: sigmoid gives exactly 0.0 or 1.0
        for head in model.heads():
            head[2].weight.zero_()
            head[2].bias.copy_(torch.where(torch.rand(head[2].bias.shape, generator=generator) < 0.4, -200.0, 40.0))
    set_engine(model, "masked")
    with torch.no_grad():
        model(digits)
    soft = model.expected_macs("soft")
    assert torch.equal(soft, model.expected_macs("hard"))
    _, t = _run(model, digits, "sparse")
    assert torch.equal(soft.long(), t.macs_executed)
    assert float(soft.mean()) < model.macs_full  # something was skipped


def test_expected_macs_are_differentiable_and_soft(digits):
    model = lcnet("lc").train()
    set_engine(model, "masked")
    model(digits)
    expected = model.expected_macs("soft")
    expected.mean().backward()
    grads = [p.grad for h in model.heads() for p in h.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    # soft values differ from the hard count (the gates are not saturated)
    assert not torch.equal(expected.detach(), model.expected_macs("hard"))


def test_straight_through_gate():
    value = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)
    hard = straight_through(value, 0.5)
    assert hard.tolist() == [0.0, 1.0, 1.0]
    (hard * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert value.grad.tolist() == [1.0, 2.0, 3.0]


# --- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ["masked", "sparse"])
def test_a_freshly_wrapped_backbone_gives_the_backbones_logits(mode, engine, digits):
    """Gates on, nothing trained yet: every gate keeps everything at scale exactly 1."""
    torch.manual_seed(0)
    static = _mixed(create_model("cifar_resnet20", num_classes=10, in_chans=1))
    model = create_model(f"lcnet_{mode}_cifar_resnet20", num_classes=10, in_chans=1)
    model.load_backbone_state(static.state_dict())
    assert all(float(head.scale(torch.tensor(head.init_value))) == 1.0 for head in model.heads())
    logits, t = _run(model.eval(), digits, engine)
    with torch.no_grad():
        torch.testing.assert_close(logits, static(digits), rtol=1e-6, atol=1e-6)
    assert (t.macs_executed >= model.full_macs((8, 8))).all()  # nothing skipped


@pytest.mark.parametrize("backbone", ["cifar_resnet20", "resnet18"])
def test_wraps_the_backbone_and_loads_its_weights(backbone, digits):
    torch.manual_seed(0)
    in_chans = 1 if backbone.startswith("cifar") else 3
    static = _mixed(create_model(backbone, num_classes=10, in_chans=in_chans))
    model = create_model(f"lcnet_lc_{backbone}", num_classes=10, in_chans=in_chans)
    model.load_backbone_state(static.state_dict())
    for key, value in static.state_dict().items():
        assert torch.equal(model.backbone_state_dict()[key], value), key
    x = digits if in_chans == 1 else torch.nn.functional.interpolate(digits, size=(32, 32)).repeat(1, 3, 1, 1)
    model.eval().gating = False  # the plain static network
    with torch.no_grad():
        torch.testing.assert_close(model(x), static(x), rtol=0, atol=0)
    with pytest.raises(KeyError, match="missing"):
        model.load_backbone_state({k: v for k, v in static.state_dict().items() if "fc" not in k})




@pytest.mark.parametrize("mode", MODES)
def test_training_runs_in_the_masked_engine_and_the_sparse_engine_refuses_it(mode, digits):
    """LC-Net trains every row (straight-through gates) in the masked engine; the sparse
    engine slices BatchNorm running statistics, so it refuses train mode with a clear message."""
    model = lcnet(mode).train()
    set_engine(model, "masked")
    model(digits).sum().backward()
    assert all(p.grad is not None for p in model.heads()[0].parameters())
    set_engine(model, "sparse")
    with pytest.raises(RuntimeError, match="runs in eval mode only"):
        model(digits)


# --- the oracle (the latency harness's hand-written forward) ---------------------------------


@pytest.mark.parametrize("mode", ["l", "c", "lc"])
def test_the_oracle_computes_the_model_with_its_decisions_made_beforehand(mode, digits):
    from reference_impls.lcnet.oracle import forward_with_decisions

    model = lcnet(mode)
    for engine in ("sparse", "masked"):  # the model's own decisions, read from either engine
        set_engine(model, engine)
        for x in (digits[:1], digits[1:2], digits[:24]):
            with torch.no_grad():
                expected = model(x)
                oracle = model.oracle(x)
                torch.testing.assert_close(oracle(), expected, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(forward_with_decisions(model, x), expected, rtol=1e-4, atol=1e-5)
    model.gating = False  # the static backbone: the oracle is the plain network
    with torch.no_grad():
        torch.testing.assert_close(model.oracle(digits[:8])(), model(digits[:8]), rtol=1e-4, atol=1e-5)


def test_bottleneck_lcnets_have_no_oracle():
    torch.manual_seed(0)
    model = create_model("lcnet_c_resnet50", num_classes=10).eval()
    assert model.oracle(torch.zeros(1, 3, 32, 32)) is None
