"""CI goldens in two tiers (benchmarks.goldens): inference goldens on checked-in weights and
images, exact architecture counts, and training checks bounded by measured bands.

When an inference golden fails, some implementation moved a pinned number (the message names
the case, engine, sample and what moved). If the change is deliberate, re-record with
`python -m benchmarks.goldens record` and commit the diff. The same checks run under every
CPU kernel setting in `tox -e portability`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.goldens import (
    ARCHITECTURES_FILE,
    CASES_FILE,
    INFERENCE_DIR,
    TRAINING_FILE,
    architectures,
    inference,
    training,
)
from benchmarks.goldens.inference import GoldenFileError, compare_engine, read_record, verify_record
from benchmarks.goldens.report import format_mismatches, write_junit
from benchmarks.registry import get_model_spec, list_models

RECORDS = sorted(INFERENCE_DIR.glob("*.json"))
TOL = dict(inference.TOLERANCES)
#: dynamic models whose controllers compute no MACs (a softmax-confidence threshold)
PARAMETER_FREE_CONTROLLERS = {"d2nn_cascade_confidence"}
#: dynamic models whose cost is the same for every sample: FBS keeps exactly k channels per
#: sample, so samples differ in which channels run, not in how many (the logits and the
#: winner-take-all margins pin which; tests/test_dynamic_contract.py checks the sets differ)
FIXED_COST_MODELS = {"fbs_cifar_resnet20"}


def family(name: str) -> str:
    """A registered model's family: its model file, and for a dynamic model its routing
    variant (LC-Net's mode tag, or the design itself)."""
    spec = get_model_spec(name)
    modes = [t for t in spec.tags if t.startswith("mode:")]
    if spec.kind == "dynamic" and not modes:
        return name
    return spec.module + (f"[{modes[0]}]" if modes else "")


# --- tier 1: inference goldens --------------------------------------------------------------


def test_every_registered_family_has_an_inference_golden():
    cases = inference.load_cases(CASES_FILE)
    covered = {family(c.model) for c in cases}
    ours = [n for n in list_models() if not get_model_spec(n).module.startswith("tests.")]  # not test-only models
    missing = {family(n) for n in ours} - covered
    assert not missing, f"model families without an inference golden: {sorted(missing)}; add a case to {CASES_FILE}"
    assert {c.name for c in cases} == {p.stem for p in RECORDS}, "cases.yaml and the recorded goldens differ"


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_inference_golden_holds(path):
    doc = read_record(path)
    mismatches = verify_record(doc, INFERENCE_DIR)
    assert not mismatches, format_mismatches(mismatches, str(path), "python -m benchmarks.goldens record")


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_inference_goldens_pin_real_routing(path):
    """A dynamic golden must route (several decision patterns and costs), and few of its
    samples may sit near a boundary: an exempt sample pins nothing."""
    doc = read_record(path)
    assert doc["weights"]["sha256"] and len(doc["engines"]["sparse"]["logits"]) == inference.N_INPUTS
    for engine, obs in doc["engines"].items():
        near = inference.near_boundary_count(doc)[engine]
        assert near <= 0.1 * inference.N_INPUTS, f"{path.stem} {engine}: {near} samples near a boundary"
        if len(doc["engines"]) > 1:  # dynamic: both engines pinned
            patterns = {tuple(v[i] for v in (*obs["units"].values(), *obs["channels"].values())) for i in range(inference.N_INPUTS)}
            if doc["model"] in FIXED_COST_MODELS:
                assert obs["margin"] and max(obs["margin"]) > 0, f"{path.stem}: no decision recorded"
            else:
                assert len(patterns) > 1 and len(set(obs["macs_theoretical"])) > 1, f"{path.stem}: every sample routed alike"
            if doc["model"] not in PARAMETER_FREE_CONTROLLERS:
                assert min(obs["macs_controller"]) > 0, f"{path.stem}: controllers not counted"
    if len(doc["engines"]) > 1:
        assert doc["engines"]["sparse"]["units"] == doc["engines"]["masked"]["units"]
        assert doc["engines"]["sparse"]["macs_theoretical"] == doc["engines"]["masked"]["macs_theoretical"]


def _lcnet_doc():
    return read_record(INFERENCE_DIR / "lcnet_lc_cifar_resnet20.json")


def test_a_changed_gate_threshold_fails_with_a_readable_diff(monkeypatch):
    """The regression a golden exists for: LC-Net's thresholds 0.5 -> 0.45 flips decisions
    that are far from the boundary; the diff names engine, sample, unit and margin."""
    from reference_impls.lcnet import model as lcnet

    original = lcnet.LCNetBlock.__init__

    def lowered(self, *args, **kwargs):
        kwargs.update(tau_l=0.45, tau_c=0.45)
        original(self, *args, **kwargs)

    monkeypatch.setattr(lcnet.LCNetBlock, "__init__", lowered)
    mismatches = verify_record(_lcnet_doc(), INFERENCE_DIR)
    assert mismatches
    decisions = [m for m in mismatches if " unit " in m.metric or " channels " in m.metric]
    assert decisions and all("exact; margin" in m.allowed for m in decisions)
    text = format_mismatches(mismatches, "results/expected/inference", "python -m benchmarks.goldens record")
    assert "lcnet_lc_cifar_resnet20" in text and " sample " in text and "expected" in text


def test_a_changed_layer_fails(monkeypatch):
    """A wider layer no longer fits the pinned weights: reported as moved, not a crash."""
    from benchmarks import registry

    spec = registry.get_model_spec("digits_cnn")

    def wider(**kwargs):
        kwargs["widths"] = [w + 1 for w in kwargs["widths"]]
        return spec.builder(**kwargs)

    monkeypatch.setitem(registry._REGISTRY, "digits_cnn", dataclasses.replace(spec, builder=wider))
    (m,) = verify_record(read_record(INFERENCE_DIR / "digits_cnn.json"), INFERENCE_DIR)
    assert m.metric == "weights" and "size mismatch" in m.got


def _observation(n=4, margin=1.0):
    return {
        "logits": [[1.0, -2.0] for _ in range(n)],
        "macs_executed": [100] * n, "macs_theoretical": [90] * n, "macs_controller": [5] * n,
        "units": {"b1": [1] * n}, "channels": {"b1.conv": [4] * n}, "margin": [margin] * n,
    }  # fmt: skip


def test_decisions_near_the_boundary_are_exempt_and_others_are_exact():
    expected = _observation()
    got = copy.deepcopy(expected)
    got["units"]["b1"][0] = 0
    (m,) = compare_engine("toy", "sparse", expected, got, TOL)
    assert (m.metric, m.expected, m.got) == ("sparse sample 0 unit b1", 1, 0) and "margin 1 >= eps" in m.allowed
    expected["margin"][0] = TOL["margin_epsilon"] / 2  # the pinned decision sat on the threshold
    assert compare_engine("toy", "sparse", expected, got, TOL) == []


def test_macs_are_exact_once_decisions_match_and_logits_have_a_stated_tolerance():
    expected = _observation()
    got = copy.deepcopy(expected)
    got["macs_executed"][1] += 1
    got["logits"][2][0] += 0.5 * (TOL["logits_atol"] + TOL["logits_rtol"] * 2.0)  # within
    got["logits"][3][1] += 2.0 * (TOL["logits_atol"] + TOL["logits_rtol"] * 2.0)  # beyond
    found = {(m.metric, m.allowed) for m in compare_engine("toy", "masked", expected, got, TOL)}
    assert found == {("masked sample 1 macs_executed", "exact given the decisions"),
                     ("masked sample 3 logit 1", "|diff| <= 1e-05 + 0.0001*max|row|")}  # fmt: skip
    got = copy.deepcopy(expected)
    got["logits"][0][0] = math.nan
    assert [m.metric for m in compare_engine("toy", "masked", expected, got, TOL)] == ["masked sample 0 logit 0"]


def test_bad_golden_files_are_refused_with_one_message(tmp_path):
    doc = json.loads((INFERENCE_DIR / "digits_cnn.json").read_text(encoding="utf-8"))
    other = tmp_path / "other_schema.json"
    other.write_text(json.dumps({**doc, "schema": 99}), encoding="utf-8")
    with pytest.raises(GoldenFileError, match="schema version 99; this dynbench reads version 1"):
        read_record(other)
    edited = tmp_path / "edited.json"
    edited.write_text((INFERENCE_DIR / "digits_cnn.json").read_text(encoding="utf-8")[:-40], encoding="utf-8")
    with pytest.raises(GoldenFileError, match=r"is not valid JSON \(line \d+.*edited by hand"):
        read_record(edited)
    missing_field = tmp_path / "no_engines.json"
    missing_field.write_text(json.dumps({k: v for k, v in doc.items() if k != "engines"}), encoding="utf-8")
    with pytest.raises(GoldenFileError, match="field 'engines'"):
        read_record(missing_field)
    with pytest.raises(GoldenFileError, match="does not exist"):
        inference.records_in(tmp_path / "nowhere")


def test_generated_weights_are_portable_and_pinned():
    from benchmarks.registry import create_model

    model = create_model("cifar_resnet56_l1_a", num_classes=10, in_chans=1)
    first, second = inference.generated_state(model, 0), inference.generated_state(model, 0)
    assert inference.state_sha256(first) == inference.state_sha256(second)
    assert inference.state_sha256(first) == read_record(INFERENCE_DIR / "cifar_resnet56_l1_a.json")["weights"]["sha256"]
    assert inference.state_sha256(inference.generated_state(model, 1)) != inference.state_sha256(first)


def test_junit_report_lists_each_golden(tmp_path):
    import xml.etree.ElementTree as ET

    from benchmarks.goldens.report import Mismatch

    path = tmp_path / "goldens.xml"
    write_junit(path, "dynbench check", {"ok": [], "moved": [Mismatch("moved", "logit 0", 1.0, 2.0, "tol")]}, {"ok": 0.1})
    root = ET.parse(path).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    assert [c.get("name") for c in root.iter("testcase")] == ["ok", "moved"]
    assert "logit 0" in root.find("testcase[@name='moved']/failure").text


def test_environment_record_names_the_cpu_kernels():
    from benchmarks.environment import environment_record

    record = environment_record("cpu")
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["blas"] and record["onednn"] and isinstance(record["kernel_env"], dict)


# --- architecture counts (exact) ------------------------------------------------------------


@pytest.mark.slow
def test_architecture_counts_reproduce_their_goldens():
    expected = architectures.read(ARCHITECTURES_FILE)
    got = architectures.architecture_counts(sorted({key.split("@")[0] for key in expected}))
    mismatches, _ = architectures.compare(expected, got)
    assert not mismatches, format_mismatches(mismatches, str(ARCHITECTURES_FILE), "python -m benchmarks.goldens record --architectures")


def test_a_broken_architecture_fails_the_goldens(monkeypatch):
    """A deliberately wrong shortcut option (B instead of A) in ResNet-20 must be caught."""
    from benchmarks import registry

    spec = registry.get_model_spec("cifar_resnet20")
    wrong = registry.get_model_spec("cifar_resnet20_b").builder
    monkeypatch.setitem(registry._REGISTRY, "cifar_resnet20", dataclasses.replace(spec, builder=wrong))
    expected = {"cifar_resnet20@cifar10": architectures.read(ARCHITECTURES_FILE)["cifar_resnet20@cifar10"]}
    mismatches, _ = architectures.compare(expected, architectures.architecture_counts(["cifar_resnet20"]))
    assert [(m.item, m.metric, m.expected, m.got) for m in mismatches] == [
        ("arch cifar_resnet20@cifar10", "macs", 40_551_040, 40_813_184),
        ("arch cifar_resnet20@cifar10", "params", 269_722, 272_474),
    ]


# --- tier 2: training checks ----------------------------------------------------------------


def test_training_bands_were_measured_over_the_kernel_matrix_and_seeds():
    doc = training.read(TRAINING_FILE)
    assert set(doc["checks"]) == {c.name for c in training.CHECKS}
    for name, pinned in doc["checks"].items():
        settings = {r["setting"] for r in pinned["measured"]}
        seeds = {r["seed"] for r in pinned["measured"]}
        assert len(settings) >= 12 and len(seeds) >= 3, f"{name}: measured on {len(settings)} settings × {len(seeds)} seeds"
        assert pinned["band"] == training.band([r["value"] for r in pinned["measured"]])
        assert not pinned["broken_invariants"], f"{name}: an invariant broke while measuring: {pinned['broken_invariants']}"


def test_band_rule():
    b = training.band([1.0, 1.2, 0.8])
    assert b["mean"] == pytest.approx(1.0) and b["std"] == pytest.approx(0.2)
    assert (b["low"], b["high"]) == pytest.approx((1.0 - 0.8, 1.0 + 0.8))
    assert training.band([5.0, 5.0])["high"] == pytest.approx(5.0 + training.MIN_HALF_WIDTH * 5.0)


@pytest.mark.slow
def test_training_checks_hold():
    results = training.verify(training.read(TRAINING_FILE))
    moved = [m for ms in results.values() for m in ms]
    assert not moved, format_mismatches(moved, str(TRAINING_FILE), "python -m benchmarks.goldens measure")


def test_golden_paths_are_in_the_repository():
    for path in (ARCHITECTURES_FILE, CASES_FILE, TRAINING_FILE):
        assert Path(path).is_file(), path
