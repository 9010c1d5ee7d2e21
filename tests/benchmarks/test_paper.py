"""Published numbers: the checked-in table, its normalization, and the loader."""

from __future__ import annotations

import csv
import math
import re
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import paper
from benchmarks.errors import ConfigError, DataNotFoundError, UnknownNameError


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return paper.load_published()


@pytest.fixture(scope="module")
def source_rows() -> dict[int, dict[str, str]]:
    return dict(paper.read_source(paper.DEFAULT_SOURCE))


def one(df: pd.DataFrame, row_id: str) -> pd.Series:
    hit = df[df["id"] == row_id]
    assert len(hit) == 1, row_id
    return hit.iloc[0]


# --- the checked-in file --------------------------------------------------------------------


def test_checked_in_csv_is_byte_identical_to_a_fresh_build():
    fresh = paper.render_csv(paper.build_rows(paper.DEFAULT_SOURCE)).encode("utf-8")
    assert paper.DEFAULT_PUBLISHED.read_bytes() == fresh
    assert paper.check()


def test_dtypes_are_the_declared_ones(df):
    assert list(df.columns) == list(paper.COLUMNS)
    for column, dtype in paper.COLUMNS.items():
        assert str(df[column].dtype) == dtype, column
    # pandas' own reader agrees on the numeric columns, so the file is not only our loader's
    plain = pd.read_csv(paper.DEFAULT_PUBLISHED)
    assert plain["value"].dtype == "float64" and plain["value_macs"].dtype == "float64"
    assert plain["source_line"].dtype == "int64"


def test_every_source_row_is_represented_and_every_value_parses(df, source_rows):
    assert set(df["source_line"]) == set(source_rows)
    assert df["value"].map(math.isfinite).all()
    assert df["id"].is_unique
    assert df["id"].str.fullmatch(r"[a-z0-9._-]+").all()


def test_value_as_printed_comes_from_the_source_cell(df, source_rows):
    for row in df.itertuples():
        cell = source_rows[row.source_line][row.source_field]
        assert row.value_as_printed in cell, row.id
        # the printed text carries the number itself (modulo scale suffixes and sign)
        digits = re.sub(r"[^0-9]", "", row.value_as_printed)
        assert digits, row.id


def test_vocabularies(df):
    assert set(df["status"]) <= set(paper.STATUSES)
    assert set(df["qualifier"]) <= set(paper.QUALIFIERS)
    assert set(df["metric"]) <= set(paper.METRICS)
    assert set(df["dataset"]) <= set(paper.DATASET_IDS)
    assert (df["unit"] == df["metric"].map(paper.METRICS)).all()
    assert df["source_url"].str.match(r"https?://\S+$").all()
    assert (df["split"] == "test").all()


def test_percentages_stay_in_range(df):
    pct = df[df["metric"].isin(paper.PERCENT_METRICS)]
    assert len(pct) > 200
    assert pct["value"].between(0, 100).all()


def test_cost_rows_have_macs(df):
    cost = df[df["metric"].isin(paper.COST_METRICS)]
    assert len(cost) > 80
    assert cost["value_macs"].notna().all()
    assert (cost["value_macs"] == cost["value"]).all()
    assert (cost["value_macs"] == cost["value_macs"].round()).all()
    # block/layer execution ratios are not MAC counts and must not pretend to be
    ratios = df[df["metric"].isin(["block_exec_ratio", "layer_exec_ratio"])]
    assert len(ratios) == 6 and ratios["value_macs"].isna().all()
    # accuracy and params rows never carry MACs
    assert df[df["metric"].isin(["top1_acc", "top1_err", "params"])]["value_macs"].isna().all()


@pytest.mark.parametrize(
    "row_id, printed, macs, inferred",
    [
        ("liu17-t1a-cifar10-vgg19-static-macs", "7.97E8", 398_500_000, True),
        ("bd18-repo-readme-cifar10-resnet110-blockdrop-gamma10-macs", "1.81E8", 90_500_000, False),
        ("bd18-repo-readme-cifar10-resnet110-blockdrop-gamma10-macs_std", "3.43E7", 17_150_000, False),
        ("bd18-repo-readme-imagenet-resnet101-blockdrop-gamma5-macs", "1.25E10", 6_250_000_000, False),
        ("liu17-t2-imagenet-vgg11-network_slimming-baseline-center-crop-macs", "4.57E10", 22_850_000_000, True),
        ("li17-t1-cifar10-resnet56-l1_filter-baseline-macs", "1.25E8", 125_000_000, False),
        ("he16-t6-cifar10-resnet20-static-macs", "40.55M", 40_550_000, False),
        ("he16-t1-imagenet-resnet152-static-macs", "11.3E9", 11_300_000_000, False),
        ("tv-meta-imagenet-resnet18-static-tv-imagenet1k_v1-center-crop-224-macs", "1.814G", 1_814_000_000, False),
        ("tp-wip-table-imagenet-resnet50-thinet-macs", "2.58G", 2_580_000_000, True),
    ],
)  # fmt: skip
def test_flops_to_macs_on_hand_checked_rows(df, row_id, printed, macs, inferred):
    row = one(df, row_id)
    assert row["value_as_printed"] == printed
    assert row["value_macs"] == macs
    assert bool(row["unit_inferred"]) is inferred
    halved = "2×MACs" in row["unit_as_printed"]
    assert ("FLOPs ÷ 2" in row["conversion"]) is halved


def test_every_halving_is_declared_by_its_unit(df):
    cost = df[df["metric"] == "macs"]
    for row in cost.itertuples():
        printed = paper.parse_number(row.value_as_printed)
        ratio = Decimal(int(row.value_macs)) / printed
        assert ratio == (Decimal("0.5") if "2×MACs" in row.unit_as_printed else 1), row.id


def _half_ulp(printed: str) -> float:
    """Half a unit in the last printed digit: '40.55M' -> 5e3, '1.25E8' -> 5e5."""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:E(\d+))?([KMG]?)", printed)
    decimals = len(m.group(2) or "")
    scale = 10 ** int(m.group(3) or 0) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(4)]
    return 0.5 * 10**-decimals * scale


@pytest.mark.parametrize(
    "paper_key, method, variant, dataset, backbone",
    [
        ("HE16", "static", "", "cifar10", f"resnet{d}") for d in (20, 32, 44, 56, 110)
    ] + [
        ("LI17", "l1_filter", "baseline", "cifar10", b) for b in ("resnet56", "resnet110", "vgg16")
    ] + [
        ("LI17", "static", "", "cifar10", "vgg16"),
    ] + [
        ("TV", "static", "tv-imagenet1k_v1", "imagenet", b)
        for b in ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mobilenet_v2")
    ],
)  # fmt: skip
def test_static_macs_rows_line_up_with_exact_counts(
    df, paper_key, method, variant, dataset, backbone
):
    rows = paper.select_published(
        df, paper=paper_key, method=method, variant=variant, dataset=dataset,
        backbone=backbone, metric="macs",
    )  # fmt: skip
    assert len(rows) == 1
    row = rows.iloc[0]
    exact = paper.FULL_MODEL_MACS[(dataset, backbone)]
    assert abs(row["value_macs"] - exact) <= _half_ulp(row["value_as_printed"]), row["id"]


LI17_TABLE1 = {  # (backbone, variant): (MACs, params), as printed in Li et al. Table 1
    ("resnet56", "baseline"): (1.25e8, 8.5e5),
    ("resnet56", "pruned-a"): (1.12e8, 7.7e5),
    ("resnet56", "pruned-b"): (9.09e7, 7.3e5),
    ("resnet110", "baseline"): (2.53e8, 1.72e6),
    ("resnet110", "pruned-a"): (2.13e8, 1.68e6),
    ("resnet110", "pruned-b"): (1.55e8, 1.16e6),
    ("vgg16", "baseline"): (3.13e8, 1.5e7),
    ("vgg16", "pruned-a"): (2.06e8, 5.4e6),
}


@pytest.mark.parametrize("key", sorted(LI17_TABLE1))
def test_li17_table1_values(df, key):
    backbone, variant = key
    macs, params = LI17_TABLE1[key]
    rows = paper.select_published(
        df, paper="LI17", dataset="cifar10", backbone=backbone, method="l1_filter", variant=variant
    )
    by_metric = rows.set_index("metric")
    assert by_metric.loc["macs", "value_macs"] == macs
    assert by_metric.loc["macs", "status"] == "exact"
    assert by_metric.loc["params", "value"] == params


def test_derived_accuracy_is_100_minus_error(df):
    derived = df[df["conversion"] == "100 − top1_err"]
    assert len(derived) > 50 and (derived["status"] == "derived").all()
    err = df[df["metric"] == "top1_err"].set_index("source_line")["value"]
    for row in derived.itertuples():
        assert row.value + err[row.source_line] == pytest.approx(100), row.id


# --- statuses, qualifiers and what is deliberately absent ----------------------------------


def test_lcnet_claims_are_approximate_up_to_rows(df):
    rows = df[df["method"] == "lcnet"].set_index(["dataset", "metric"])
    assert len(rows) == 4
    assert (rows["status"] == "approximate").all()
    assert (rows["qualifier"] == "up to").all()
    assert rows["value_as_printed"].str.contains("up to").all()
    assert rows.loc[("cifar10", "speedup"), "value"] == 11.9
    assert rows.loc[("cifar10", "top1_acc_gain"), "value"] == 3.3
    assert rows.loc[("imagenet", "speedup"), "value"] == 1.4
    assert rows.loc[("imagenet", "top1_acc_gain"), "value"] == 4.6
    assert (df.loc[df["qualifier"] == "up to", "status"] == "approximate").all()


def test_no_d2nn_numbers_are_invented(df):
    assert not df["method"].str.contains("d2nn", case=False).any()
    assert not df["paper"].str.contains("d2nn", case=False).any()


def test_third_party_speedups_are_secondary_and_their_percentages_derived(df):
    tp = df[df["paper"] == "TP"]
    assert (tp.loc[tp["metric"] == "speedup", "status"] == "exact-secondary").all()
    assert (tp.loc[tp["metric"] == "macs_reduction", "status"] == "derived").all()
    for row in tp[tp["metric"] == "speedup"].itertuples():
        reduction = tp[(tp["source_line"] == row.source_line) & (tp["metric"] == "macs_reduction")]
        assert reduction["value"].iloc[0] == pytest.approx(100 * (1 - 1 / row.value), abs=0.06)


def test_block_execution_proxies_are_not_mac_reductions(df):
    skip = df[df["paper"] == "SKIP18-repo"]
    assert not (skip["metric"] == "macs_reduction").any()
    reductions = skip[skip["metric"] == "block_exec_reduction"]
    assert len(reductions) == 5 and (reductions["status"] == "derived").all()


def test_implied_macs_for_reductions(df):
    row = one(df, "aig-abstract-imagenet-resnet50-convnet_aig-macs_reduction")
    assert row["value"] == 20 and row["status"] == "exact"
    assert row["value_macs"] == round(4_089_184_256 * 0.8)
    row = one(df, "fbs-abstract-imagenet-vgg16-fbs-speedup")
    assert row["value_macs"] == round(15_470_264_320 / 5)
    # no implied MACs without a reference count, or for an "up to" / range claim
    assert (
        df.loc[df["qualifier"].isin(["up to", "range-min", "range-max"]), "value_macs"].isna().all()
    )
    assert math.isnan(
        one(df, "skip18-s4.1-svhn-resnet152-skipnet-hrl-sp-macs_reduction")["value_macs"]
    )


def test_paper_and_reporter_split(df):
    nni = df[(df["paper"] == "NNI") & (df["metric"] == "top1_err")].set_index("variant")["value"]
    assert nni["pruned-a/paper"] == 6.60 and nni["pruned-a/nni"] == 6.47
    tp = one(df, "tp-table-cifar10-resnet56-depgraph-2.13x-delta_top1_acc")
    assert tp["value"] == 0.38 and tp["value_as_printed"] == "Δacc +0.38"  # kept as printed


def test_eval_protocols_separate_imagenet_numbers(df):
    he = df[(df["paper"] == "HE16") & (df["dataset"] == "imagenet") & (df["metric"] == "top1_acc")]
    assert set(he["eval_protocol"]) == {"10-crop", "multi-scale-fc"}
    tv = df[df["paper"].isin(["TV", "TIMM"]) & (df["metric"] == "top1_acc")]
    assert tv["eval_protocol"].str.startswith("center-crop-").all()


# --- reference counts and torchvision's own metadata ----------------------------------------


def _cifar_resnet_option_a_macs(depth: int, num_classes: int) -> int:
    n = (depth - 2) // 6
    macs, hw, c_in = 3 * 16 * 9 * 32 * 32, 32, 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            if stage > 0 and block == 0:
                hw //= 2
            macs += c_in * width * 9 * hw * hw + width * width * 9 * hw * hw
            c_in = width
    return macs + 64 * num_classes


def _cifar_vgg16_macs() -> int:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    macs, c_in, hw = 0, 3, 32
    for v in cfg:
        if v == "M":
            hw //= 2
        else:
            macs += c_in * v * 9 * hw * hw
            c_in = v
    return macs + 512 * 512 + 512 * 10


def test_full_model_macs_cifar_closed_form():
    for (dataset, backbone), macs in paper.FULL_MODEL_MACS.items():
        if dataset == "imagenet":
            continue
        if backbone == "vgg16":
            assert macs == _cifar_vgg16_macs()
        else:
            depth = int(backbone.removeprefix("resnet"))
            assert macs == _cifar_resnet_option_a_macs(depth, 100 if dataset == "cifar100" else 10)
    assert paper.FULL_MODEL_MACS[("cifar10", "resnet56")] == 125_485_696  # DESIGN §3


def test_full_model_macs_imagenet_match_torchvision():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from torch.utils.flop_counter import FlopCounterMode

    for (dataset, backbone), macs in paper.FULL_MODEL_MACS.items():
        if dataset != "imagenet":
            continue
        with torch.device("meta"):  # shapes only: no weights initialised, nothing downloaded
            model = torchvision.models.get_model(backbone).eval()
            x = torch.empty(1, 3, 224, 224)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        assert counter.get_total_flops() // 2 == macs, backbone


def test_torchvision_rows_match_installed_weight_metadata(df):
    torchvision = pytest.importorskip("torchvision")
    rows = df[df["paper"] == "TV"]
    assert len(rows) == 24
    for _, group in rows.groupby("source_line"):
        table = group["table_figure"].iloc[0]  # e.g. "ResNet18_Weights.IMAGENET1K_V1 meta"
        enum_name, member = table.removesuffix(" meta").split(".")
        meta = getattr(torchvision.models, enum_name)[member].meta
        values = group.set_index("metric")["value"]
        assert values["top1_acc"] == pytest.approx(meta["_metrics"]["ImageNet-1K"]["acc@1"])
        assert values["params"] == meta["num_params"]
        assert values["macs"] == pytest.approx(meta["_ops"] * 1e9)
        # torchvision's "GFLOPS" are multiply-accumulates: its `_ops` equals our MAC count
        backbone = group["backbone"].iloc[0]
        exact = paper.FULL_MODEL_MACS[("imagenet", backbone)]
        assert meta["_ops"] == pytest.approx(exact / 1e9, abs=5e-4)


# --- parsing units --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("40.55M", "40550000"), ("1.25E8", "125000000"), ("11.3E9", "11300000000"),
     ("11,689,512", "11689512"), ("0.301G", "301000000"), ("92.50", "92.5"), ("-0.00", "0"),
     ("+0.38", "0.38")],
)  # fmt: skip
def test_parse_number(text, value):
    assert paper.format_decimal(paper.parse_number(text)) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "12 M", "1,2345", "ten"])
def test_parse_number_rejects(text):
    with pytest.raises(ValueError):
        paper.parse_number(text)


@pytest.mark.parametrize(
    "text, default, fields",
    [
        ("err/params exact; acc derived (100-err); MACs derived", None,
         {"err": "exact", "params": "exact", "acc": "derived", "cost": "derived"}),
        ("exact (abstract; 'up to')", "exact", {}),
        ("acc exact; MACs derived (approx.)", None, {"acc": "exact", "cost": "approximate"}),
        ("exact-secondary (WIP table, provenance not stated); approximate", "approximate", {}),
        ("exact-secondary (third-party table); reduction % derived", "exact-secondary",
         {"reduction": "derived"}),
        ("exact; acc derived; FLOP unit inferred", "exact", {"acc": "derived"}),
        ("exact (abstract); table values not found", "exact", {}),
    ],
)  # fmt: skip
def test_parse_status(text, default, fields):
    assert paper.parse_status(text) == (default, fields)


def test_parse_status_rejects_unknown_wording():
    with pytest.raises(ValueError, match="unrecognized status"):
        paper.parse_status("probably right")


@pytest.mark.parametrize(
    "printed, expected",
    [("ResNet-56", "resnet56"), ("ResNet-34 B", "resnet34"), ("VGG-16-BN", "vgg16"),
     ("VGG-16 (CIFAR variant, BN, 512-512-10 FC)", "vgg16"), ("VGGNet-19", "vgg19"),
     ("MobileNetV2 x1.0", "mobilenet_v2"), ("ResNet-164 (pre-act bottleneck)", "preact_resnet164"),
     ("not stated in abstract", "")],
)  # fmt: skip
def test_normalize_backbone(printed, expected):
    assert paper.normalize_backbone(printed) == expected


# --- bad input ------------------------------------------------------------------------------


def _write_source(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=paper.SOURCE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _first_rows(n: int = 3) -> list[dict[str, str]]:
    return [dict(row) for _, row in paper.read_source(paper.DEFAULT_SOURCE)[:n]]


def test_unknown_unit_names_line_and_leaves_output_untouched(tmp_path):
    rows = _first_rows()
    rows[1]["flops_unit"] = "bananas"
    src = _write_source(tmp_path / "src.csv", rows)
    out = tmp_path / "published.csv"
    out.write_text("old\n")
    with pytest.raises(ConfigError, match=r"src\.csv:3: unknown cost unit 'bananas'"):
        paper.build(src, out, copy_source_to=None)
    assert out.read_text() == "old\n"


@pytest.mark.parametrize(
    "field, value, message",
    [("backbone", "Transformer-9000", "unknown backbone"),
     ("dataset", "MNIST-M", "unknown dataset"),
     ("method_variant", "something new", "no method rule"),
     ("status", "pretty sure", "unrecognized status clause"),
     ("source_url", "ftp://example.org/x", "source_url must be an http"),
     ("params", "lots", "unparsable params")],
)  # fmt: skip
def test_bad_source_cells_are_config_errors(tmp_path, field, value, message):
    rows = _first_rows(1)
    rows[0][field] = value
    with pytest.raises(ConfigError, match=message):
        paper.build_rows(_write_source(tmp_path / "src.csv", rows))


def test_bad_header_and_missing_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="header must be"):
        paper.build_rows(bad)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not a UTF-8 CSV"):
        paper.build_rows(binary)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        paper.build_rows(tmp_path / "nope.csv")
    with pytest.raises(DataNotFoundError, match="not found"):
        paper.load_published(tmp_path / "nope.csv")


def test_load_rejects_a_tampered_file(tmp_path):
    text = paper.DEFAULT_PUBLISHED.read_text(encoding="utf-8")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(text.replace("value_macs", "macs", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match="missing: value_macs"):
        paper.load_published(renamed)
    bad_status = tmp_path / "status.csv"
    bad_status.write_text(text.replace(",exact,", ",gospel,", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match="'gospel'"):
        paper.load_published(bad_status)


# --- selection and command line -------------------------------------------------------------


def test_select_published(df):
    rows = paper.select_published(df, dataset="cifar10", backbone="resnet56", metric="top1_acc")
    assert {"HE16", "AKA", "CHENYAOFO", "LI17", "TP", "PPSM"} <= set(rows["paper"])
    assert (rows["metric"] == "top1_acc").all()
    static = paper.select_published(
        df, dataset="cifar10", backbone="resnet56", method="static", metric=["top1_acc", "macs"]
    )
    assert set(static["paper"]) == {"HE16", "AKA", "CHENYAOFO"}
    # a suite dataset or model without published numbers is an empty answer, not an error
    assert paper.select_published(df, dataset="digits").empty
    assert paper.select_published(df, backbone="small_cnn").empty
    with pytest.raises(UnknownNameError, match="cifar10"):
        paper.select_published(df, dataset="cifar-10")
    with pytest.raises(UnknownNameError, match="top1_acc"):
        paper.select_published(df, metric="top1_accuracy")
    with pytest.raises(UnknownNameError):
        paper.select_published(df, backbone="small_cnn", strict=True)


def test_cli_build_and_check(tmp_path, capsys):
    out = tmp_path / "published.csv"
    copy = tmp_path / "copy.csv"
    assert paper.main(["check", "--out", str(out)]) == 1  # nothing built yet
    rows = paper.build(paper.DEFAULT_SOURCE, out, copy_source_to=copy)
    assert copy.read_bytes() == paper.DEFAULT_SOURCE.read_bytes()  # a verbatim copy, CRLF and all
    assert out.read_bytes() == paper.DEFAULT_PUBLISHED.read_bytes() and rows > 500
    assert paper.main(["check", "--out", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("93.03", "93.3"), encoding="utf-8")
    assert paper.main(["check", "--out", str(out)]) == 1
    assert paper.main(["build", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
