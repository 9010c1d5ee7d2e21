"""The cost model (benchmarks.cost): published MAC and parameter counts, agreement with
torch.utils.flop_counter and ptflops, per-sample costs over real splits, and `dynbench cost`."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from ptflops import get_model_complexity_info
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.cli import main as dynbench_main
from benchmarks.cost import (
    MAC_KINDS,
    OTHER_KINDS,
    count_macs,
    count_params,
    measure_cost,
    measure_split_costs,
    summarize,
)
from benchmarks.data import load_split
from benchmarks.errors import DynbenchError
from benchmarks.registry import ModelSpec, create_model, list_models
from benchmarks.results import RESULT_COLUMNS
from benchmarks.routing import GatedConv2d, set_engine, trace
from tests.benchmarks.toy_models import build_toy


@pytest.fixture(scope="module")
def digits_test():
    return load_split("digits", "test")


def meta(build, *args, **kwargs) -> nn.Module:
    """Build on the meta device: shapes only, nothing allocated or computed."""
    with torch.device("meta"):
        return build(*args, **kwargs).eval()


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


# --- published numbers ----------------------------------------------------------------------

# He et al. 2016 option-A CIFAR ResNets: MACs at 32×32 (exact) and params as printed
CIFAR_RESNETS = [
    ("cifar_resnet20", 40_551_040, "0.27"),
    ("cifar_resnet32", 68_862_592, "0.46"),
    ("cifar_resnet44", 97_174_144, "0.66"),
    ("cifar_resnet56", 125_485_696, "0.85"),
    ("cifar_resnet110", 252_887_680, "1.7"),
]


@pytest.mark.parametrize("name,macs,params", CIFAR_RESNETS)
def test_cifar_resnets_match_he_et_al(name, macs, params):
    model = meta(create_model, name, num_classes=10)
    count = count_macs(model, (3, 32, 32))
    assert count.macs == macs
    digits = len(params.split(".")[1])
    assert f"{count.params / 1e6:.{digits}f}" == params


def test_cifar_vgg16_matches_li_et_al():
    count = count_macs(meta(create_model, "cifar_vgg16", num_classes=10), (3, 32, 32))
    assert f"{count.macs:.2E}" == "3.13E+08"
    assert f"{count.params:.1E}" == "1.5E+07"


@pytest.mark.parametrize("name,gmacs", [
    ("resnet18", "1.814"), ("resnet34", "3.664"), ("resnet50", "4.089"), ("resnet101", "7.801"),
    ("mobilenet_v2", "0.301"),
])
def test_torchvision_models_match_their_docs(name, gmacs):
    model = meta(getattr(torchvision.models, name))
    count = count_macs(model, (3, 224, 224))
    assert f"{count.macs / 1e9:.3f}" == gmacs
    assert count.params == count_params(model)
    # the registry's torchvision-backed ids count the same
    assert count_macs(meta(create_model, name), (3, 224, 224)).macs == count.macs


# --- cross-checks ---------------------------------------------------------------------------

AGREEMENT_MODELS = [
    ("timm", "resnet18"), ("timm", "mobilenetv2_100"), ("timm", "efficientnet_b0"),
    ("timm", "vit_tiny_patch16_224"), ("torchvision", "resnet50"),
]


def _build(source: str, name: str) -> nn.Module:
    if source == "timm":
        return meta(timm.create_model, name, pretrained=False)
    return meta(getattr(torchvision.models, name))


@pytest.mark.parametrize("source,name", AGREEMENT_MODELS)
def test_static_counts_agree_with_flop_counter_and_ptflops(source, name):
    model = _build(source, name)
    ours = count_macs(model, (3, 224, 224)).macs
    # the references do not count fused attention (F.scaled_dot_product_attention) on CPU:
    # give them the explicit q @ kᵀ and attn @ v matmuls that ours counts inside the fused op
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    reference = flop_counter_macs(model, torch.zeros(1, 3, 224, 224, device="meta"))
    ptflops_macs, _ = get_model_complexity_info(
        model, (3, 224, 224), backend="aten", as_strings=False,
        print_per_layer_stat=False, verbose=False,
    )
    assert abs(ours - reference) / reference < 0.005
    assert abs(ours - ptflops_macs) / ptflops_macs < 0.005
    assert count_macs(model, (3, 224, 224)).macs == ours  # explicit matmuls count the same


def test_module_counter_equals_function_counter_on_cnns():
    model = meta(torchvision.models.mobilenet_v2)
    assert count_macs(model, (3, 224, 224), counter="modules").macs == count_macs(model, (3, 224, 224)).macs
    vit = meta(timm.create_model, "vit_tiny_patch16_224")
    # fused attention is functional: only the function counter sees it
    assert count_macs(vit, (3, 224, 224), counter="modules").macs < count_macs(vit, (3, 224, 224)).macs


class Functional(nn.Module):
    """Attention-like computations written with functions, not modules."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.w = nn.Parameter(torch.randn(16, 12))

    def forward(self, x):  # x: (N, 5, 16)
        if self.op == "einsum":
            return torch.einsum("nld,de->nle", x, self.w)
        if self.op == "einsum3":
            return torch.einsum("nld,nmd,de->nle", x, x, self.w)
        if self.op == "bmm":
            return torch.bmm(x, x.transpose(1, 2))
        if self.op == "matmul":
            return x @ self.w
        if self.op == "baddbmm":
            return torch.baddbmm(torch.zeros(x.shape[0], 5, 5), x, x.transpose(1, 2))
        if self.op == "linear":
            return torch.nn.functional.linear(x, self.w.T)
        if self.op == "sdpa":
            q = x.view(x.shape[0], 5, 2, 8).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)
        raise ValueError(self.op)


@pytest.mark.parametrize("op", ["einsum", "einsum3", "bmm", "matmul", "baddbmm", "linear", "sdpa"])
def test_function_rules_match_flop_counter(op):
    model = Functional(op)
    x = torch.randn(3, 5, 16)
    with torch.no_grad(), trace(counter="functions") as t:
        model(x)
    if op == "sdpa":  # per sample: heads × L × S × (E + Ev)
        expected = 2 * 5 * 5 * (8 + 8)
    elif op == "einsum3":  # left to right: sum over m of (l d)(m d), then (l d)(d e)
        expected = 5 * 5 * 16 + 5 * 16 * 12
    else:
        expected = flop_counter_macs(model, x) // 3
    assert int(t.macs_executed[0]) == expected


@pytest.mark.parametrize("kind", ["mha", "mha_batch_first", "lstm", "gru", "lstm_cell", "conv_transpose"])
@pytest.mark.parametrize("counter", ["modules", "functions"])
def test_attention_recurrent_and_transposed_layers(kind, counter):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    if kind.startswith("mha"):
        batch_first = kind.endswith("batch_first")
        layer = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        run = lambda: layer(x, x, x)  # noqa: E731
    elif kind == "lstm":
        layer = nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True)
        run = lambda: layer(x)  # noqa: E731
    elif kind == "gru":
        layer = nn.GRU(16, 8)
        run = lambda: layer(x)  # noqa: E731
    elif kind == "lstm_cell":
        layer = nn.LSTMCell(16, 8)
        run = lambda: layer(x[:, 0])  # noqa: E731
    else:
        layer = nn.ConvTranspose2d(16, 4, 3, stride=2, groups=2)
        run = lambda: layer(x.view(2, 16, 2, 3))  # noqa: E731
    # with autograd on, nn.MultiheadAttention takes its explicit (bmm) path, and without
    # mkldnn nn.LSTM decomposes into matmuls: paths the flop counter sees (the fused ones hide
    # their matmuls from it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mkldnn.flags' note about Intel GPUs
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
            run()
    with trace(batch_size=1, counter=counter) as t:
        run()
    assert int(t.macs_executed[0]) == fc.get_total_flops() // 2


def test_other_ops_are_reported_separately():
    model = meta(torchvision.models.resnet18)
    count = count_macs(model, (3, 224, 224))
    assert set(count.by_kind) <= set(MAC_KINDS) and sum(count.by_kind.values()) == count.macs
    assert set(count.other_ops) == set(OTHER_KINDS)
    assert count.other_ops["norm"] > 0 and count.other_ops["elementwise"] > 0  # BN, residual adds
    assert count_macs(model, (3, 224, 224), counter="modules").other_ops == {}


def test_dynamic_models_are_counted_on_real_inputs_only(digits_test):
    model = build_toy("lcnet")
    with pytest.raises(DynbenchError, match="real evaluation inputs"):
        count_macs(model, (1, 8, 8))
    count = count_macs(model, digits_test.images[:1])
    assert count.macs_controller > 0 and count.macs >= count.macs_theoretical
    with pytest.raises(ValueError, match="one sample"):
        count_macs(model, digits_test.images[:2])


# --- per-sample costs over a split ----------------------------------------------------------


def test_measure_cost_over_a_split(digits_test):
    model = build_toy("lcnet")
    result = measure_cost(model, digits_test, engine="sparse", batch_size=16, limit=40)
    frame = result.per_sample
    assert len(frame) == 40 and list(frame.index) == list(range(40))
    assert {"macs_executed", "macs_theoretical", "macs_controller", "units_executed",
            "prediction", "target", "correct"} <= set(frame.columns)
    assert frame["target"].tolist() == digits_test.targets[:40].tolist()
    s = result.summary
    e = s["macs_executed"]
    assert e["min"] <= e["p50"] <= e["p90"] <= e["p99"] <= e["max"] and e["std"] > 0
    assert e["mean"] == pytest.approx(frame["macs_executed"].mean())
    assert sum(s["units_histogram"].values()) == 40
    assert set(s["unit_rates"]) == set(result.units.columns) and len(result.units) == 40
    assert not s["simulated_savings"] and s["engine"] == "sparse" and result.counter == "functions"
    assert s["accuracy"] == pytest.approx(100 * frame["correct"].mean())
    # per-sample values equal a batch-of-one trace (batch invariance through the harness)
    with torch.no_grad(), trace() as t:
        model(digits_test.images[7:8])
    assert int(t.macs_executed[0]) == int(frame["macs_executed"].iloc[7])
    columns = result.as_result_columns()
    assert set(columns) <= set(RESULT_COLUMNS) and columns["macs_mean"] == e["mean"]
    # replaying the static parts' counts (the default) changes nothing but the time
    intercepted = measure_cost(model, digits_test, engine="sparse", batch_size=16, limit=40, replay=False)
    pd.testing.assert_frame_equal(intercepted.per_sample, frame)
    pd.testing.assert_frame_equal(intercepted.units, result.units)
    assert intercepted.by_kind == result.by_kind


def test_masked_engine_executes_everything_and_is_not_flagged(digits_test):
    model = build_toy("lcnet")
    masked = measure_cost(model, digits_test, engine="masked", limit=24).summary
    sparse = measure_cost(model, digits_test, engine="sparse", limit=24).summary
    assert masked["macs_executed"]["mean"] > masked["macs_theoretical"]["mean"]
    assert masked["macs_theoretical"] == sparse["macs_theoretical"]
    assert not masked["simulated_savings"] and not sparse["simulated_savings"]


def test_simulated_savings_are_flagged(digits_test):
    model = set_engine(build_toy("cnet"), "sparse")
    for module in model.modules():  # one engine left behind: computes everything
        if isinstance(module, GatedConv2d):
            module.engine = "masked"
    result = measure_cost(model, digits_test, limit=24)
    assert result.engine == "mixed" and result.summary["simulated_savings"]
    assert result.summary["executed_over_theoretical"] > 1.01


def test_measuring_leaves_the_model_unchanged(digits_test):
    model = build_toy("lcnet").train()
    model.layers[0].eval()  # a submodule in another mode keeps it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    measure_cost(model, digits_test, limit=16, engine="masked")
    count_macs(model, digits_test.images[:1])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == {name: m.training for name, m in model.named_modules()}


def test_the_default_counter_sees_functional_matmuls(digits_test):
    class FunctionalHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.w = nn.Parameter(torch.randn(256, 10))

        def forward(self, x):
            return self.conv(x).flatten(1) @ self.w

    result = measure_cost(FunctionalHead(), digits_test, limit=8)
    assert result.counter == "functions"
    assert result.per_sample["macs_executed"].iloc[0] == 4 * 9 * 64 + 256 * 10
    with torch.no_grad(), trace() as t:
        FunctionalHead()(digits_test.images[:1])
    assert t.counter == "functions" and int(t.macs_executed[0]) == 4 * 9 * 64 + 256 * 10
    modules_only = measure_cost(FunctionalHead(), digits_test, limit=8, counter="modules")
    assert modules_only.per_sample["macs_executed"].iloc[0] == 4 * 9 * 64  # why it is not the default


def test_measure_split_costs_and_summarize_directly(digits_test):
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    result = measure_split_costs(model, digits_test, batch_size=64, limit=10)
    assert result.summary["macs_executed"]["std"] == 0 and result.engine is None
    assert result.units.shape == (10, 0) and result.summary["units_histogram"] == {0: 10}
    frame = pd.DataFrame({"macs_executed": [4, 2], "macs_theoretical": [1, 1],
                          "macs_controller": [0, 0], "units_executed": [1, 0]})
    assert summarize(frame, engine="sparse")["simulated_savings"]
    assert not summarize(frame, engine="masked")["simulated_savings"]


# --- dynbench cost --------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    try:
        dynbench_main(["cost", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def toy_registered(monkeypatch):
    from benchmarks import registry

    list_models()  # load the real registry first
    spec = ModelSpec(name="toy_lcnet", builder=lambda num_classes=10, in_chans=1: build_toy("lcnet"),
                     paper="test", kind="dynamic")
    monkeypatch.setitem(registry._REGISTRY, "toy_lcnet", spec)
    return "toy_lcnet"


def test_cli_writes_per_sample_csv_and_summary(tmp_path, capsys):
    out = tmp_path / "cost" / "r20.csv"
    code = run_cli("cifar_resnet20", "--dataset", "digits", "--limit", "20", "--out", str(out))
    printed = capsys.readouterr().out
    assert code == 0 and "executed" in printed and "simulated savings: no" in printed
    frame = pd.read_csv(out, index_col="sample")
    assert len(frame) == 20 and (frame["macs_executed"] == frame["macs_theoretical"]).all()
    summary = json.loads((tmp_path / "cost" / "r20.csv.summary.json").read_text())
    assert summary["model"] == "cifar_resnet20" and summary["samples"] == 20
    assert summary["macs_executed"]["mean"] == frame["macs_executed"].iloc[0]
    assert not list(tmp_path.glob("cost/.*.tmp"))


def test_cli_dynamic_model_both_engines(tmp_path, capsys, toy_registered):
    codes = [run_cli(toy_registered, "--dataset", "digits", "--limit", "16", "--engine", engine,
                     "--batch-size", "8", "--out", str(tmp_path / f"{engine}.csv"))
             for engine in ("masked", "sparse")]
    assert codes == [0, 0]
    masked = pd.read_csv(tmp_path / "masked.csv", index_col="sample")
    sparse = pd.read_csv(tmp_path / "sparse.csv", index_col="sample")
    assert (masked["prediction"] == sparse["prediction"]).all()
    assert (masked["macs_theoretical"] == sparse["macs_theoretical"]).all()
    assert (masked["macs_executed"] > sparse["macs_executed"]).all()
    assert "randomly initialised" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["cifar_resnet2", "--dataset", "digits"], "unknown model 'cifar_resnet2'"),
    (["cifar_resnet20", "--dataset", "digitz"], "unknown dataset 'digitz'"),
    (["cifar_resnet20", "--dataset", "digits", "--weights", "w.pt"], "expected a .safetensors"),
    (["cifar_resnet20", "--dataset", "digits", "--weights", "missing.safetensors"], "no such file"),
    (["resnet18", "--dataset", "digits", "--device", "cuda:7"], "CUDA"),
])
def test_cli_bad_input_is_one_clear_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"x")
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_weights_that_do_not_fit(tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(bad))
    assert run_cli("cifar_resnet20", "--dataset", "digits", "--weights", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "Traceback" not in err
