"""benchmarks.latency: statistics, warm-up and issuing on a fake clock; the sample set; the CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn as nn

from benchmarks import latency as lat
from benchmarks.data import load_split
from benchmarks.data.manifest import index_list_sha256
from benchmarks.errors import ConfigError, DynbenchError


class FakeClock:
    """A nanosecond clock that only moves when told to (by the fake model or synchronize)."""

    def __init__(self) -> None:
        self.now = 0
        self.syncs = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns

    def synchronize(self, cost_ns: int = 0):
        def sync() -> None:
            self.syncs += 1
            self.now += cost_ns

        return sync


class Recorder:
    """A 'model' that costs a scripted time per call and records which samples it saw.

    Sample-set images carry their position as their value, so a batch names its samples.
    """

    def __init__(self, clock: FakeClock, durations_ns) -> None:
        self.clock, self.durations = clock, durations_ns
        self.calls: list[list[int]] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.clock.advance(self.durations(len(self.calls)))
        self.calls.append([int(v) for v in batch.flatten(1)[:, 0]])
        return batch


def positions_images(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()


# --- statistics -----------------------------------------------------------------------------


def test_summary_statistics_match_hand_computed_values():
    times_ns = [i * 1_000_000 for i in range(100, 0, -1)]  # 1..100 ms, in reverse order
    s = lat.summarize_times(times_ns)
    assert s["count"] == 100
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(50.5)  # mean of the two middle values
    assert s["p10_ms"] == pytest.approx(10.9)  # rank 0.1 * 99 = 9.9 -> 10 + 0.9
    assert s["p90_ms"] == pytest.approx(90.1)  # rank 0.9 * 99 = 89.1 -> 90 + 0.1
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["std_ms"] == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std of 1..n
    assert (s["min_ms"], s["max_ms"]) == (1.0, 100.0)


def test_summary_of_one_call_and_of_none():
    s = lat.summarize_times([2_500_000])
    assert s["p50_ms"] == s["p99_ms"] == s["mean_ms"] == 2.5 and s["std_ms"] == 0.0
    with pytest.raises(ValueError):
        lat.summarize_times([])


def test_median_ignores_a_few_interrupted_calls():
    times = [10_000_000] * 95 + [900_000_000] * 5  # 5% of calls hit by another process
    s = lat.summarize_times(times)
    assert s["p50_ms"] == 10.0 and s["mean_ms"] > 50


# --- the timing loop on a fake clock --------------------------------------------------------


def run_loop(clock, model, n=8, b=1, **kwargs):
    images = positions_images(n)
    defaults = dict(repeats=1, warmup_iters=0, warmup_s=0.0, min_time_s=0.0,
                    preemptions=lambda: 0)
    return lat.time_calls(
        model,
        lat.round_robin_batches(images, b),
        batch_size=b,
        set_size=n,
        clock=clock,
        synchronize=kwargs.pop("synchronize", clock.synchronize()),
        **{**defaults, **kwargs},
    )


def test_timed_values_are_the_model_costs_and_include_synchronize():
    clock = FakeClock()
    model = Recorder(clock, lambda i: 1_000_000 * (i + 1))
    raw = run_loop(clock, model, n=4, b=1, repeats=4, synchronize=clock.synchronize(7))
    # no warm-up asked for: the timed calls are the model's calls 0..3, plus the sync cost
    assert raw.timed_ns == [1_000_007, 2_000_007, 3_000_007, 4_000_007]
    assert clock.syncs == 4  # one synchronize per timed call, inside the timed region


def test_warmup_runs_until_both_count_and_time_are_reached():
    clock = FakeClock()
    model = Recorder(clock, lambda i: 1_000_000)  # 1 ms a call
    # time dominates: 10 ms needs 10 calls, more than the 3 asked for
    raw = run_loop(clock, model, warmup_iters=3, warmup_s=0.010)
    assert raw.warmup_calls == 10 and raw.warmup_elapsed_ns == 10_000_000
    # count dominates: 20 calls take 20 ms, more than the 5 ms asked for
    clock2 = FakeClock()
    raw2 = run_loop(clock2, Recorder(clock2, lambda i: 1_000_000), warmup_iters=20, warmup_s=0.005)
    assert raw2.warmup_calls == 20 and raw2.warmup_elapsed_ns == 20_000_000
    # warm-up timings are kept apart from the timed ones
    assert len(raw2.timed_ns) == 8 and len(raw2.warmup_ns) == 20


def test_slow_first_call_only_lands_in_warmup():
    clock = FakeClock()
    model = Recorder(clock, lambda i: 500_000_000 if i == 0 else 2_000_000)
    raw = run_loop(clock, model, n=4, repeats=4, warmup_iters=1)
    assert raw.warmup_ns == [500_000_000]
    assert set(raw.timed_ns) == {2_000_000}


@pytest.mark.parametrize("n,b,repeats", [(8, 3, 5), (8, 1, 3), (6, 4, 1), (5, 8, 2), (256, 64, 50)])
def test_every_sample_is_timed_equally_often(n, b, repeats):
    clock = FakeClock()
    model = Recorder(clock, lambda i: 1000)
    raw = run_loop(clock, model, n=n, b=b, repeats=repeats, warmup_iters=3)
    timed_calls = model.calls[raw.warmup_calls :]
    counts = [0] * n
    for call in timed_calls:
        assert len(call) == b
        for position in call:
            counts[position] += 1
    assert len(set(counts)) == 1 and counts[0] >= 1  # equal, and nobody left out
    assert raw.issues == counts
    assert len(timed_calls) % lat.issue_period(n, b) == 0 and len(timed_calls) >= repeats
    assert timed_calls[0][0] == 0  # the timed phase starts the cycle afresh after warm-up
    assert raw.first_positions() == [c[0] for c in timed_calls]


def test_min_time_extends_by_whole_periods():
    clock = FakeClock()
    model = Recorder(clock, lambda i: 1_000_000)
    # period 8 calls = 8 ms; 20 ms needs 3 periods
    raw = run_loop(clock, model, n=8, b=1, repeats=1, min_time_s=0.020)
    assert len(raw.timed_ns) == 24
    assert raw.issues == [3] * 8


def test_preempted_calls_are_reissued_with_the_same_batch_and_kept_apart():
    clock = FakeClock()
    switches = {"n": 0}
    preempted_calls = {1, 2, 3, 9}  # model calls during which "another process" ran

    def durations(i):
        if i in preempted_calls:
            switches["n"] += 1
            return 50_000_000
        return 1_000_000

    model = Recorder(clock, durations)
    raw = run_loop(clock, model, n=4, b=1, repeats=4, retries=2,
                   preemptions=lambda: switches["n"])
    # slot 0 clean; slot 1: calls 1, 2, 3 all preempted -> kept the last try;
    # slot 2 (call 4) and slot 3 (call 5) clean
    assert [c[0] for c in model.calls] == [0, 1, 1, 1, 2, 3]
    assert raw.timed_ns == [1_000_000, 50_000_000, 1_000_000, 1_000_000]
    assert raw.timed_preempted == [0, 1, 0, 0]
    assert raw.retried_calls == 2 and raw.preempted_fraction == 0.25
    assert raw.issues == [1, 1, 1, 1]  # re-issuing kept the issuing equal
    assert len(raw.attempts) == 6


def test_reissuing_stops_when_futile():
    clock = FakeClock()
    switches = {"n": 0}

    def always_preempted(i):
        switches["n"] += 1
        return 1_000_000

    model = Recorder(clock, always_preempted)
    raw = run_loop(clock, model, n=32, b=1, repeats=32, retries=3,
                   preemptions=lambda: switches["n"])
    # 16 futile re-issues (slots 0-5: 3 each = 18 >= 16) -> slot 6 on: one attempt per slot
    assert raw.retries_stopped_at == 6
    assert raw.retried_calls == 18 and len(raw.attempts) == 32 + 18
    assert raw.preempted_fraction == 1.0 and raw.issues == [1] * 32


def test_issue_period_and_positions():
    assert lat.issue_period(256, 1) == 256
    assert lat.issue_period(256, 64) == 4
    assert lat.issue_period(256, 256) == 1
    assert lat.issue_period(256, 3) == 256
    assert lat.batch_positions(5, 3, 1) == [3, 4, 0]
    assert lat.timed_call_count(4, 50) == 52
    with pytest.raises(ConfigError):
        lat.issue_period(0, 1)


def test_round_robin_batches_are_views_unless_they_wrap():
    images = positions_images(6)
    batches = lat.round_robin_batches(images, 4)  # period 3: [0-3], [4,5,0,1], [2-5]
    assert [b[:, 0, 0, 0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]
    assert batches[0].data_ptr() == images.data_ptr()
    cl = images.contiguous(memory_format=torch.channels_last)
    wrapped = lat.round_robin_batches(cl, 4)[1]
    assert wrapped.is_contiguous(memory_format=torch.channels_last)


def test_bad_loop_settings_are_user_errors():
    clock = FakeClock()
    with pytest.raises(ConfigError):
        run_loop(clock, Recorder(clock, lambda i: 1), repeats=0)


# --- the latency sample set -----------------------------------------------------------------


def test_sample_set_is_deterministic_and_hashed():
    a = lat.latency_sample_set("digits", count=64, seed=0)
    b = lat.latency_sample_set("digits", count=64, seed=0)
    c = lat.latency_sample_set("digits", count=64, seed=1)
    assert a.indices == b.indices and a.sha256 == b.sha256 and torch.equal(a.images, b.images)
    assert a.sha256 != c.sha256 and a.indices != c.indices
    assert a.sha256 == index_list_sha256(a.indices) and len(a.sha256) == 64
    assert len(set(a.indices)) == 64


def test_sample_set_comes_from_the_test_split():
    test = load_split("digits", "test")
    s = lat.latency_sample_set("digits", count=32, seed=3)
    assert s.split == "test" and max(s.indices) < len(test)
    assert torch.equal(s.images, test.images[list(s.indices)])
    assert s.describe()["sample_set_sha256"] == s.sha256 and s.input_transform == ""


def test_sample_set_too_large_is_a_user_error():
    with pytest.raises(ConfigError, match="only 360"):
        lat.latency_sample_set("digits", count=1000)


def test_fit_to_shape_is_recorded():
    s = lat.latency_sample_set("digits", count=8, input_shape=(3, 32, 32))
    assert s.input_shape == (3, 32, 32)
    assert s.input_transform.startswith("1x8x8->3x32x32")
    assert torch.equal(s.images[:, 0], s.images[:, 2])  # grey repeated
    with pytest.raises(ConfigError):
        lat.fit_to_shape(torch.zeros(2, 3, 4, 4), (1, 4, 4))


# --- measuring a model ----------------------------------------------------------------------


class ClockedNet(nn.Module):
    """A real small module whose forward also advances the fake clock: cost ∝ batch size."""

    def __init__(self, clock: FakeClock, ns_per_sample: int) -> None:
        super().__init__()
        self.clock, self.ns = clock, ns_per_sample
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        self.seen_grad_mode: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.advance(self.ns * len(x))
        self.seen_grad_mode.append(torch.is_inference_mode_enabled() and not self.training)
        return self.fc(self.conv(x).mean((2, 3)))


def test_measure_model_rows_on_a_fake_clock():
    clock = FakeClock()
    net = ClockedNet(clock, ns_per_sample=100_000)  # 0.1 ms per sample
    samples = lat.latency_sample_set("digits", count=16)
    config = lat.LatencyConfig(batch_sizes=(1, 4), threads=1, repeats=3, warmup_iters=2,
                               warmup_s=0.0, min_time_s=0.0)
    results = lat.measure_model(net, samples, "clocked", config, clock=clock,
                                synchronize=clock.synchronize(), preemptions=lambda: 0)
    rows = {r.row["batch_size"]: r.row for r in results}
    assert set(rows) == {1, 4}
    one, four = rows[1], rows[4]
    assert one["engine"] == lat.STATIC_ENGINE
    assert one["p50_ms"] == pytest.approx(0.1) and four["p50_ms"] == pytest.approx(0.4)
    assert four["per_sample_p50_ms"] == pytest.approx(0.1)
    assert four["throughput_sps"] == pytest.approx(10_000)
    assert one["timed_calls"] == 16 and one["issues_per_sample"] == 1  # period 16 > repeats
    assert four["timed_calls"] == 4 and four["warmup_calls"] == 2
    for row in (one, four):
        assert row["sample_set_sha256"] == samples.sha256
        assert row["threads"] == 1 and row["env_threads"] == 1 and row["env_torch_threads"] == 1
        assert row["env_dtype"] == "float32" and row["env_channels_last"] is False
        assert len(row["environment_hash"]) == 12
    assert all(net.seen_grad_mode)  # every call in eval + inference mode
    raw = results[1].raw_rows()
    assert [r["phase"] for r in raw] == ["warmup"] * 2 + ["timed"] * 4
    assert [r["kept"] for r in raw] == [False] * 2 + [True] * 4
    assert four["retried_calls"] == 0 and four["preempted_fraction"] == 0.0
    assert [r["first_sample"] for r in raw if r["phase"] == "timed"] == [0, 4, 8, 12]


def test_threads_are_pinned_during_measurement_and_restored():
    before = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    config = lat.LatencyConfig(batch_sizes=(8,), threads=1, repeats=1, warmup_iters=0,
                               warmup_s=0, min_time_s=0)
    lat.measure_model(Probe(), lat.latency_sample_set("digits", count=8), "probe", config)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before


def test_wrong_input_shape_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    config = lat.LatencyConfig(batch_sizes=(1,), repeats=1, warmup_iters=0, warmup_s=0,
                               min_time_s=0)
    with pytest.raises(DynbenchError, match="--input-shape"):
        lat.measure_model(model, lat.latency_sample_set("digits", count=4), "rgb", config)


def test_compile_failure_is_a_clear_error():
    def broken(x):
        raise RuntimeError("backend compiler failed\nlong inductor traceback")

    samples = lat.latency_sample_set("digits", count=4)
    with pytest.raises(DynbenchError, match=r"torch.compile\(mode='default'\): backend compiler failed"):
        lat._check_runs(broken, samples.images[:1], "m", samples, compile_mode="default")


@pytest.mark.parametrize(
    "kwargs", [dict(batch_sizes=()), dict(batch_sizes=(0,)), dict(threads=0), dict(dtype="int8"),
               dict(compile_mode="fast"), dict(device="tpu"), dict(repeats=0), dict(warmup_s=-1)]
)
def test_bad_config_is_a_user_error(kwargs):
    with pytest.raises(ConfigError):
        lat.LatencyConfig(**kwargs)


# --- realization ratio ----------------------------------------------------------------------


def test_realization_ratio():
    static = {"batch_size": 1, "p50_ms": 10.0}
    dynamic = {"batch_size": 1, "p50_ms": 6.0}
    r = lat.realization_ratio(dynamic, static, dynamic_macs=50.0, static_macs=100.0)
    assert r["speedup"] == pytest.approx(10 / 6)
    assert r["macs_reduction"] == pytest.approx(2.0)
    assert r["realization_ratio"] == pytest.approx((10 / 6) / 2)
    perfect = lat.realization_ratio({"batch_size": 1, "p50_ms": 5.0}, static, 50.0, 100.0)
    assert perfect["realization_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="batch"):
        lat.realization_ratio({"batch_size": 8, "p50_ms": 6.0}, static, 50.0, 100.0)
    with pytest.raises(ValueError):
        lat.realization_ratio(dynamic, static, 0.0, 100.0)
    with pytest.raises(ValueError):
        lat.realization_ratio({"batch_size": 1}, static, 50.0, 100.0)


# --- the CLI --------------------------------------------------------------------------------


def run_cli(args, capsys):
    from benchmarks.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


FAST = ["--repeats", "1", "--warmup-s", "0", "--warmup-iters", "1", "--min-time-s", "0",
        "--samples", "16"]


def test_cli_writes_summary_and_raw_csvs(tmp_path, capsys):
    out = tmp_path / "lat"
    code, stdout, stderr = run_cli(
        ["latency", "digits_cnn", "--batch", "1,8", "--threads", "1", "--out", str(out), *FAST],
        capsys,
    )
    assert code == 0, stderr
    assert "p50_ms" in stdout and "digits_cnn" in stdout
    with open(out / "latency_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["batch_size"]) for r in rows] == [1, 8]
    for row in rows:
        assert row["dataset"] == "digits" and row["split"] == "test"
        assert row["environment_hash"] and row["sample_set_sha256"]
        with open(out / row["raw_file"], newline="") as fh:
            raw = list(csv.DictReader(fh))
        timed = [r for r in raw if r["phase"] == "timed" and r["kept"] == "True"]
        assert len(timed) == int(row["timed_calls"]) and all(int(r["time_ns"]) > 0 for r in timed)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["latency", "no_such_model"], "unknown model"),
        (["latency", "digits_cnn", "--batch", "1,x"], "--batch"),
        (["latency", "digits_cnn", "--batch", "0"], "--batch"),
        (["latency", "digits_cnn", "--threads", "0"], "threads"),
        (["latency", "digits_cnn", "--samples", "5000"], "only 360"),
        (["latency", "digits_cnn", "--input-shape", "3,32"], "C,H,W"),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(args, message, capsys, tmp_path):
    code, _, stderr = run_cli([*args[:2], *FAST, *args[2:], "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o" / "latency_summary.csv").exists()


# --- dynamic models and the realization ratio, on a fake clock ------------------------------


class MacsClock:
    """Advances a fake clock by `factor` ns per MAC of every conv/linear call: time ∝ MACs."""

    def __init__(self, clock: FakeClock, model: nn.Module):
        self.clock, self.factor = clock, 1
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_hook(self.hook)

    def hook(self, m, args, out):
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            k = m.in_features
        self.clock.advance(out.numel() * k * self.factor)


def fake_timing(clock):
    return dict(clock=clock, synchronize=clock.synchronize(), preemptions=lambda: 0)


def test_dynamic_model_is_timed_in_both_engines():
    from tests.benchmarks.test_bench_latency import toy_pair

    model, _ = toy_pair(width=4)
    assert lat.is_dynamic(model) and lat.model_engines(model) == ("masked", "sparse")
    assert lat.model_engines(model, ["sparse"]) == ("sparse",)
    with pytest.raises(ConfigError):
        lat.model_engines(model, ["fast"])
    clock = FakeClock()
    MacsClock(clock, model)
    config = lat.LatencyConfig(batch_sizes=(1, 8), repeats=1, warmup_iters=1, warmup_s=0,
                               min_time_s=0)
    samples = lat.latency_sample_set("digits", count=16)
    rows = [m.row for m in lat.measure_model(model, samples, "toy", config, **fake_timing(clock))]
    assert [(r["engine"], r["batch_size"]) for r in rows] == [
        ("masked", 1), ("masked", 8), ("sparse", 1), ("sparse", 8)
    ]
    masked, sparse = rows[0], rows[2]
    # the sparse engine runs half the blocks: on a clock ∝ MACs it takes about half the time
    assert sparse["mean_ms"] < 0.6 * masked["mean_ms"]


def test_realization_is_one_when_time_follows_macs_and_drops_with_overhead():
    from benchmarks import routing
    from tests.benchmarks.test_bench_latency import toy_pair

    model, backbone = toy_pair(width=4)
    clock = FakeClock()
    MacsClock(clock, backbone)  # the dynamic model shares the backbone's layers and hooks
    samples = lat.latency_sample_set("digits", count=16)
    config = lat.LatencyConfig(batch_sizes=(1, 16), repeats=1, warmup_iters=0, warmup_s=0,
                               min_time_s=0)
    result = lat.measure_realization(model, backbone, samples, "toy", "backbone", config,
                                     engines=("sparse",), **fake_timing(clock))
    assert result.static_macs > result.dynamic_macs["sparse"] > 0.45 * result.static_macs
    assert [r["batch_size"] for r in result.rows] == [1, 16]
    for row in result.rows:
        reduction = result.static_macs / result.dynamic_macs["sparse"]
        assert row["macs_reduction"] == pytest.approx(reduction)
        assert row["realization_ratio"] == pytest.approx(1.0, rel=1e-6)

    # a fixed cost per routing decision (gather/scatter overhead) lowers the ratio below 1
    original = routing.route

    def slow_route(*args, **kwargs):
        clock.advance(200_000)
        return original(*args, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(routing, "route", slow_route):
        slowed = lat.measure_realization(model, backbone, samples, "toy", "backbone", config,
                                         engines=("sparse",), **fake_timing(clock))
    assert all(r["realization_ratio"] < 0.95 for r in slowed.rows)


def test_cli_baseline_writes_realization(tmp_path, capsys):
    out = tmp_path / "lat"
    code, stdout, stderr = run_cli(
        ["latency", "digits_cnn", "--batch", "8", "--baseline", "fmnist_cnn", "--out", str(out),
         *FAST], capsys,
    )
    assert code == 0, stderr
    with open(out / "realization.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["baseline"], row["engine"]) == ("digits_cnn", "fmnist_cnn", "none")
    reduction = float(row["baseline_macs"]) / float(row["macs"])
    assert float(row["macs_reduction"]) == pytest.approx(reduction)
    ratio = float(row["speedup"]) / float(row["macs_reduction"])
    assert float(row["realization_ratio"]) == pytest.approx(ratio)
    with open(out / "latency_summary.csv", newline="") as fh:
        assert {r["model"] for r in csv.DictReader(fh)} == {"digits_cnn", "fmnist_cnn"}
    assert "realization_ratio" in stdout


# --- options and devices --------------------------------------------------------------------


def test_channels_last_and_dtype_are_applied_and_recorded():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            seen.append((x.dtype, x.is_contiguous(memory_format=torch.channels_last),
                         self.conv.weight.dtype))
            return self.conv(x)

    config = lat.LatencyConfig(batch_sizes=(3,), repeats=1, warmup_iters=0, warmup_s=0,
                               min_time_s=0, dtype="bfloat16", channels_last=True)
    clock = FakeClock()
    (m,) = lat.measure_model(Probe(), lat.latency_sample_set("digits", count=8), "probe",
                             config, **fake_timing(clock))
    assert set(seen) == {(torch.bfloat16, True, torch.bfloat16)}  # wrapped batches too
    assert m.row["env_dtype"] == "bfloat16" and m.row["env_channels_last"] is True
    assert m.row["dtype"] == "bfloat16" and m.row["compile_mode"] == ""


@pytest.mark.gpu
def test_cuda_timing_with_events():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 64, 10))
    config = lat.LatencyConfig(device="cuda", batch_sizes=(1, 64), repeats=5, warmup_iters=3,
                               warmup_s=0.1, min_time_s=0.1)
    results = lat.measure_model(model, lat.latency_sample_set("digits"), "mlp", config)
    for m in results:
        assert m.row["p50_ms"] > 0 and m.row["env_device_type"] == "cuda"
        assert m.row["env_device_name"] and m.row["issues_per_sample"] >= 1
    assert next(model.parameters()).is_cuda


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    config = lat.LatencyConfig(device="cuda", batch_sizes=(1,))
    with pytest.raises(DynbenchError, match="no CUDA device"):
        lat.measure_model(nn.Identity(), lat.latency_sample_set("digits", count=4), "id", config)


@pytest.mark.parametrize("rounds,expected", [(4, 1.0), (1, 0.5)])
def test_interleaved_rounds_cancel_a_load_change(rounds, expected):
    """The machine gets twice as slow halfway through: interleaved rounds put the change on
    both sides of the ratio; timing one model after the other does not."""
    from tests.benchmarks.test_bench_latency import toy_pair

    model, backbone = toy_pair(width=4)
    clock = FakeClock()
    macs_clock = MacsClock(clock, backbone)
    forwards = {"n": 0}
    switch_after = 2 * rounds  # forwards (1 check + 1 timed per model and round) before the change

    def count(module, args):
        if not torch.is_inference_mode_enabled():
            return  # MACs counting (no_grad), before the timing starts
        forwards["n"] += 1
        if forwards["n"] > switch_after:
            macs_clock.factor = 2

    backbone.stem.register_forward_pre_hook(count)  # shared by both models
    samples = lat.latency_sample_set("digits", count=16)
    config = lat.LatencyConfig(batch_sizes=(16,), repeats=rounds, warmup_iters=0, warmup_s=0,
                               min_time_s=0)
    result = lat.measure_realization(model, backbone, samples, "toy", "backbone", config,
                                     engines=("sparse",), rounds=rounds, **fake_timing(clock))
    (row,) = result.rows
    assert row["realization_ratio"] == pytest.approx(expected, rel=1e-6)
    assert result.static[0].row["timed_calls"] == rounds
    assert result.static[0].raw.issues == [rounds] * 16


def test_merged_rounds_keep_equal_issuing_and_all_attempts():
    clock = FakeClock()
    parts = [run_loop(clock, Recorder(clock, lambda i: 1000 * (i + 1)), n=4, b=3, repeats=1,
                      warmup_iters=w) for w in (2, 0, 0)]
    merged = lat.merge_raw(parts)
    assert merged.issues == [9, 9, 9, 9] and len(merged.timed_ns) == 12
    assert merged.warmup_calls == 2
    assert [c for c, *_ in merged.attempts] == list(range(12))
    assert merged.first_positions() == [(c * 3) % 4 for c in range(12)]


# --- the oracle -----------------------------------------------------------------------------

QUICK = lat.LatencyConfig(batch_sizes=(1, 8), repeats=1, warmup_iters=0, warmup_s=0, min_time_s=0)


def _centred(name: str, samples: lat.LatencySampleSet) -> nn.Module:
    from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers
    from benchmarks.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    calibrate_batchnorm(model, samples.images)
    centre_controllers(model, samples.images)
    return model


@pytest.mark.parametrize("name, baseline, oracle_batches", [
    ("lcnet_c_cifar_resnet20", "cifar_resnet20", [1, 8]),
    ("d2nn_highlow", "d2nn_highlow_high", [1]),  # a D2NN's oracle is for one image
])  # fmt: skip
def test_the_oracle_is_timed_beside_the_model_with_the_same_decisions(name, baseline, oracle_batches):
    from benchmarks.registry import create_model

    samples = lat.latency_sample_set("digits", count=16)
    model = _centred(name, samples)
    assert lat.supports_oracle(model)
    static = create_model(baseline, num_classes=10, in_chans=1)
    result = lat.measure_realization(model, static, samples, name, baseline, QUICK, engines=("sparse",), rounds=1)
    engines = [(r["engine"], r["batch_size"]) for r in result.rows]
    assert sorted(engines) == sorted([("sparse", 1), ("sparse", 8)] + [("oracle", b) for b in oracle_batches])
    assert result.dynamic_macs["oracle"] == result.dynamic_macs["sparse"]  # the same decisions
    by_batch = {r["batch_size"]: r for r in result.rows if r["engine"] == "oracle"}
    for row in result.rows:
        oracle = by_batch.get(row["batch_size"])
        if oracle is None:
            assert "oracle_realization_ratio" not in row
        else:
            assert row["oracle_realization_ratio"] == oracle["realization_ratio"]
    none = lat.measure_realization(model, static, samples, name, baseline, QUICK, engines=("sparse",),
                                   rounds=1, oracle=False)  # fmt: skip
    assert {r["engine"] for r in none.rows} == {"sparse"}


def test_an_oracle_must_reproduce_the_model_and_a_model_without_one_is_refused():
    from tests.benchmarks.test_bench_latency import toy_pair

    model, _ = toy_pair(width=4)
    with pytest.raises(ConfigError, match="has no oracle"):
        lat.model_engines(model, ["oracle"])
    model.oracle = lambda x: (lambda: torch.zeros(x.shape[0], 10))  # not the model's function
    samples = lat.latency_sample_set("digits", count=16)
    with pytest.raises(DynbenchError, match="does not reproduce the model's output"):
        lat.measure_model(model, samples, "toy", QUICK, engines=["oracle"])


def test_cli_reports_the_oracle_ratio(tmp_path, capsys):
    out = tmp_path / "lat"
    code, stdout, stderr = run_cli(
        ["latency", "d2nn_highlow", "--dataset", "digits", "--batch", "1", "--engine", "sparse",
         "--baseline", "d2nn_highlow_high", "--rounds", "1", "--out", str(out), *FAST], capsys,
    )
    assert code == 0, stderr
    with open(out / "realization.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["engine"] for r in rows] == ["sparse", "oracle"]
    assert float(rows[0]["oracle_realization_ratio"]) == pytest.approx(float(rows[1]["realization_ratio"]))
    assert "oracle_realization_ratio" in stdout


def test_a_time_cap_stops_a_slow_model_after_whole_periods_and_says_so():
    clock = FakeClock()
    model = Recorder(clock, lambda i: 1_000_000_000)  # one second per call
    batches = lat.round_robin_batches(positions_images(8), 4)  # a period of 2 calls
    raw = lat.time_calls(model, batches, batch_size=4, set_size=8, repeats=50, warmup_iters=10, warmup_s=0,
                         max_time_s=3.0, **fake_timing(clock))  # fmt: skip
    assert raw.warmup_calls == 3 and raw.capped
    assert len(raw.timed_ns) == 4 and set(raw.issues) == {2}  # whole periods: equal issuing
    free = lat.time_calls(model, batches, batch_size=4, set_size=8, repeats=6, warmup_iters=1, warmup_s=0,
                          **fake_timing(clock))  # fmt: skip
    assert not free.capped and len(free.timed_ns) == 6
    with pytest.raises(ConfigError, match="max-time-s"):
        lat.LatencyConfig(max_time_s=0)


def test_cli_times_a_trained_run_with_the_architecture_saved_beside_its_weights(tmp_path, capsys):
    from tests.benchmarks.test_bad_input import _finished_run

    weights = _finished_run(tmp_path) / "checkpoints" / "best.safetensors"  # a narrower digits_cnn
    code, _, stderr = run_cli(["latency", "digits_cnn", "--weights", str(weights), "--batch", "8",
                               "--out", str(tmp_path / "lat"), *FAST], capsys)  # fmt: skip
    assert code == 0, stderr
