"""SkipNet, BlockDrop, ConvNet-AIG and FBS: each mechanism really skips (a test that would fail
if the method were simulated), trains in the engine, and refuses bad input with one message.
The registry-wide contract (both engines, batch invariance, controllers counted) runs on their
golden cases in tests/test_dynamic_contract.py."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines.dynamic.fbs import kept_channels
from benchmarks.registry import create_model
from benchmarks.routing import decide_topk, set_engine, trace
from tests.benchmarks.test_cli import dynbench

TINY = {"num_classes": 10, "in_chans": 1, "mid_channels": [4] * 9}
FAMILIES = ("early_exit_cifar_resnet20", "skipnet_cifar_resnet20", "blockdrop_cifar_resnet20",
            "convnet_aig_cifar_resnet20", "fbs_cifar_resnet20")  # fmt: skip


@pytest.fixture(scope="module")
def images():
    from benchmarks.data import load_split

    return load_split("digits", "val", options={"pad_to": 32}).images[:16]


def _calls(module: torch.nn.Module) -> list[int]:
    """Rows seen by each call of `module` (a forward pre-hook records them)."""
    rows: list[int] = []
    module.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    return rows


def test_models_dynamic_lists_the_five_families():
    result = dynbench("models", "dynamic")
    assert result.returncode == 0, result.stderr
    for family in ("early_exit_", "skipnet_", "blockdrop_", "convnet_aig_", "fbs_"):
        assert family in result.stdout


@pytest.mark.parametrize("name", FAMILIES)
def test_a_fresh_model_on_a_backbone_loads_the_backbones_weights(name):
    torch.manual_seed(0)
    backbone = create_model("cifar_resnet20", **TINY)
    model = create_model(name, **TINY)
    model.load_backbone_state(backbone.state_dict())
    other = create_model("cifar_resnet56", num_classes=10, in_chans=1)
    with pytest.raises(KeyError, match="does not fit"):
        model.load_backbone_state(other.state_dict())


# --- BlockDrop ----------------------------------------------------------------------------------


def test_blockdrop_a_dropped_block_is_never_called_at_any_batch_size(images):
    torch.manual_seed(0)
    model = create_model("blockdrop_cifar_resnet20", **TINY).eval()
    set_engine(model, "sparse")
    rows = [_calls(block) for block in model.blocks]
    keep = torch.ones(len(images), model.num_blocks, dtype=torch.bool)
    keep[:, 4] = False  # nobody runs block 4
    keep[::2, 6] = False  # half the batch skips block 6
    with torch.no_grad(), trace(batch_size=len(images)) as t:
        model.execute(images, keep)
    assert rows[4] == [] and rows[6] == [len(images) // 2] and rows[0] == [len(images)]
    assert torch.equal(t.macs_executed, t.macs_theoretical)
    # the masked engine computes every block for every row and says so
    set_engine(model, "masked")
    with torch.no_grad(), trace(batch_size=len(images)) as tm:
        model.execute(images, keep)
    assert (tm.macs_executed > tm.macs_theoretical).all()


def test_blockdrop_policy_for_another_backbone_is_refused():
    model = create_model("blockdrop_cifar_resnet20", **TINY)
    other = create_model("blockdrop_cifar_resnet110", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="decides 54 blocks, but this backbone has 9"):
        model.load_policy_state(other.state_dict())
    model.load_policy_state(copy.deepcopy(model.state_dict()))  # its own loads


def test_blockdrop_curriculum_lets_the_policy_decide_the_last_blocks_first():
    from baselines.dynamic.methods import BlockDropMethod
    from benchmarks.engine.method import StepContext

    cfg = {"dataset": {"name": "digits"}, "model": {"name": "blockdrop_cifar_resnet20"}, "train": {},
           "method_args": {"curriculum": 0.5}}  # fmt: skip
    method = BlockDropMethod(cfg)
    learned = [method.learned_blocks(StepContext(None, 0, step, 100), 9) for step in (0, 10, 25, 49, 50, 99)]
    assert learned == sorted(learned) and learned[0] == 1 and learned[-1] == 9 and learned[-2] == 9


# --- SkipNet ------------------------------------------------------------------------------------


def test_skipnet_skips_what_its_gate_says_and_always_runs_the_first_block(images):
    torch.manual_seed(0)
    model = create_model("skipnet_cifar_resnet20", **TINY).eval()
    set_engine(model, "sparse")
    with torch.no_grad():
        model.gate.out.bias.fill_(-10.0)  # every gate says skip
    rows = [_calls(block) for block in model.blocks]
    with torch.no_grad(), trace(batch_size=len(images)) as t:
        model(images)
    assert rows[0] == [len(images)]
    assert all(r == [] for r in rows[1:])
    assert torch.equal(t.macs_executed, t.macs_theoretical) and (t.macs_controller > 0).all()


def test_skipnet_policies_soft_blends_and_sample_draws_hard_decisions(images):
    torch.manual_seed(0)
    model = create_model("skipnet_cifar_resnet20", **TINY).train()
    set_engine(model, "masked")
    model.set_policy("sample")
    model(images).sum().backward()
    actions = torch.stack(model.actions, 1)
    assert set(actions.unique().tolist()) <= {0.0, 1.0} and actions.shape == (len(images), 8)
    model.zero_grad()
    model.set_policy("soft")
    model(images).sum().backward()
    assert model.gate.out.weight.grad is not None and model.gate.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="policy"):
        model.set_policy("hard")


# --- ConvNet-AIG --------------------------------------------------------------------------------


def test_convnet_aig_trains_with_straight_through_gumbel_and_infers_by_the_larger_logit(images):
    torch.manual_seed(0)
    model = create_model("convnet_aig_cifar_resnet20", **TINY).train()
    set_engine(model, "masked")
    model(images)
    rates = model.execution_rates()
    assert rates.shape == (9,) and all(set(g.unique().tolist()) <= {0.0, 1.0} for g in model.gate_values)
    ((rates - 0.3) ** 2).mean().backward()
    assert model.gates[3].fc2.bias.grad.abs().sum() > 0  # the target loss reaches the gates
    model.eval()
    set_engine(model, "sparse")
    with torch.no_grad():
        model.gates[2].fc2.bias.copy_(torch.tensor([10.0, -10.0]))  # block 2: skip wins
    rows = _calls(model.blocks[2])
    with torch.no_grad(), trace(batch_size=len(images)) as t:
        model(images)
    assert rows == [] and "blocks.2" in t.units_executed and int(t.units_executed["blocks.2"].sum()) == 0


# --- FBS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_fbs_computes_exactly_k_channels_per_sample(images, density):
    torch.manual_seed(0)
    model = create_model("fbs_cifar_resnet20", num_classes=10, in_chans=1, density=density).eval()
    set_engine(model, "sparse")
    with torch.no_grad(), trace(batch_size=len(images)) as t:
        model(images)
    kept = t.channels_kept
    for i, block in enumerate(model.blocks):
        k = kept_channels(density, block.conv1.out_channels)
        assert torch.equal(kept[f"blocks.{i}.conv1"], torch.full((len(images),), k)), (i, k)
    assert torch.equal(t.macs_executed, t.macs_theoretical)
    full = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    with torch.no_grad(), trace(batch_size=1) as ts:
        full(images[:1])
    ratio = float(t.macs_executed.float().mean() - t.macs_controller.float().mean()) / int(ts.macs_executed[0])
    assert density <= ratio <= density + 0.05  # k = ceil(d C); the stem is never gated


def test_fbs_second_convolution_computes_only_the_kept_inputs(images, monkeypatch):
    torch.manual_seed(0)
    model = create_model("fbs_cifar_resnet20", num_classes=10, in_chans=1, density=0.5).eval()
    set_engine(model, "sparse")
    shapes: list[tuple[int, ...]] = []
    real = torch.nn.functional.conv2d

    def conv2d(x, weight, *args, **kwargs):
        shapes.append(tuple(weight.shape))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    with torch.no_grad():
        model(images[:1])
    # stem, then per block: conv1 with k of C outputs, conv2 with k of C inputs (C = 16, 32, 64)
    widths = [16] * 3 + [32] * 3 + [64] * 3
    assert shapes[0] == (16, 1, 3, 3)
    for i, c in enumerate(widths):
        c_in = 16 if i == 0 else widths[i - 1]
        assert shapes[1 + 2 * i] == (c // 2, c_in, 3, 3)
        assert shapes[2 + 2 * i] == (c, c // 2, 3, 3)


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1, True])
def test_fbs_density_outside_the_unit_interval_is_refused(density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        create_model("fbs_cifar_resnet20", num_classes=10, in_chans=1, density=density)


def test_decide_topk_keeps_k_per_row_and_records_the_gap():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, 0.2, 0.2, 0.8]])
    with trace(batch_size=2) as t:
        keep = decide_topk(scores, 2, unit="wta")
    assert keep.tolist() == [[False, True, True, False], [True, False, False, True]]
    torch.testing.assert_close(t.decision_margins["wta"], torch.tensor([0.2, 0.2]))
    with pytest.raises(ValueError, match="k must be in"):
        decide_topk(scores, 5, unit="wta")


# --- bad input through the CLI: one message, exit 2, nothing written ---------------------------


@pytest.mark.parametrize("density", ["1.5", "0", "-0.2"])
def test_bad_fbs_density_in_a_config_is_one_clear_error(tmp_path, density):
    result = dynbench("train", "dynamic/fmnist_resnet20_fbs", "--quick", "--out", str(tmp_path),
                      "--set", f"quick.sweep={{model.kwargs.density: [{density}]}}",
                      "--set", "method_args={lasso: 0.0001}")  # fmt: skip  (no backbone run needed to reach the model)
    assert result.returncode == 2, result.stderr
    assert "density must be in (0, 1]" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.safetensors"))


def test_a_policy_of_another_backbone_is_refused_by_the_method(tmp_path):
    from safetensors.torch import save_file

    other = create_model("blockdrop_cifar_resnet110", num_classes=10, in_chans=1)
    policy = tmp_path / "policy.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items() if k.startswith("policy.")}, str(policy))
    from baselines.dynamic.methods import BlockDropMethod
    from benchmarks.errors import ConfigError

    cfg = {"dataset": {"name": "digits", "options": {"pad_to": 32}}, "model": {"name": "blockdrop_cifar_resnet20", "kwargs": {}},
           "train": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd"}, "scheduler": {}, "augment": "none",
                     "label_smoothing": 0.0, "grad_clip": 0.0},
           "method_args": {"policy": str(policy.with_suffix(""))}, "seed": 0}  # fmt: skip
    method = BlockDropMethod(cfg)
    model = method.build_model(method.info)
    with pytest.raises(ConfigError, match="decides 54 blocks, but this backbone has 9"):
        method.start_stage(model, method.stages()[0], method.info)


# --- the oracle (the latency harness's plain network with the decisions fixed) ------------


@pytest.mark.parametrize("name", ["skipnet_cifar_resnet20", "blockdrop_cifar_resnet20", "convnet_aig_cifar_resnet20"])
def test_the_block_skipping_oracle_runs_the_models_decisions_without_controllers(name, images):
    from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    calibrate_batchnorm(model, images)
    centre_controllers(model, images)
    set_engine(model, "sparse")
    for x in (images[:1], images[1:2], images):
        with torch.no_grad(), trace(batch_size=len(x)) as t:
            expected = model(x)
        with torch.no_grad():
            oracle = model.oracle(x)
            torch.testing.assert_close(oracle(), expected, rtol=1e-4, atol=1e-5)
        with torch.no_grad(), trace(batch_size=len(x)) as replay:
            oracle()
        assert int(replay.macs_controller.sum()) == 0  # no controller runs
        # the blocks it runs are the model's: its MACs are the model's less the controllers'
        # (over the batch: the oracle's gathers are not routing frames, so the trace spreads
        # them evenly over the rows, rounding each row down)
        expected_total = int((t.macs_executed - t.macs_controller).sum())
        assert 0 <= expected_total - int(replay.macs_executed.sum()) < len(x)
    skipped = [bool(u.any()) and not bool(u.all()) for u in t.units_executed.values()]
    assert any(skipped)  # the batch mixes decisions: the gather/scatter path ran


@pytest.mark.parametrize("name", ["fbs_cifar_resnet20", "early_exit_cifar_resnet20"])
def test_the_channel_and_exit_oracles_compute_the_model(name, images):
    from benchmarks.goldens.inference import calibrate_batchnorm

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    calibrate_batchnorm(model, images)
    if name.startswith("early_exit"):  # exits at the median confidence: samples leave at each
        with torch.no_grad():
            logits = model.exit_logits(images)[:-1]
        model.thresholds = [float(z.softmax(1).max(1).values.median()) for z in logits]
    set_engine(model, "sparse")
    for x in (images[:1], images[3:4], images):
        with torch.no_grad():
            expected = model(x)
            assert expected.isfinite().all()
            torch.testing.assert_close(model.oracle(x)(), expected, rtol=1e-4, atol=1e-5)
