"""Published numbers: normalize the reference table into one tidy row per number, and load it.

The reference table (``results/paper/source/published_numbers.csv``, a verbatim copy of the
project's hand-collected ``published_numbers.csv``) has one row per paper/table/model with
several numbers in free-text cells ("2.12x (= 52.8% MAC reduction, derived)", "6.75 / 6.49",
"1.81E8 ± 3.43E7"). :func:`build_rows` turns it into ``results/paper/published.csv``: one row per
(paper, table, dataset, backbone, method/variant, metric), with the number exactly as printed,
its value in the metric's canonical unit, the cost normalized to MACs, and a per-number status.

    python -m benchmarks.paper build [SOURCE]   # rewrite published.csv (atomically)
    python -m benchmarks.paper check            # exit 1 if published.csv drifted from SOURCE

    from benchmarks.paper import load_published, select_published
    df = select_published(dataset="cifar10", backbone="resnet56", metric="top1_acc")

Parsing is strict on purpose: a unit, backbone, method or status wording the rules below do not
know is a `ConfigError` naming the source line and field, never a silently empty cell.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.errors import ConfigError, DataNotFoundError, UnknownNameError
from benchmarks.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # pandas is imported lazily: building the table needs only the stdlib
    import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO_ROOT / "results" / "paper"
DEFAULT_SOURCE = PAPER_DIR / "source" / "published_numbers.csv"
DEFAULT_PUBLISHED = PAPER_DIR / "published.csv"

SOURCE_COLUMNS = (
    "section", "paper", "table_figure", "dataset", "backbone", "method_variant",
    "top1_acc_pct", "top1_err_pct", "flops", "flops_unit", "flop_reduction", "params",
    "status", "source_url", "notes",
)  # fmt: skip

# Output schema, in column order. dtype names are pandas dtypes used by `load_published`.
COLUMNS: dict[str, str] = {
    "id": "string",
    "section": "string",
    "paper": "string",
    "paper_title": "string",
    "authors": "string",
    "table_figure": "string",
    "dataset": "string",
    "split": "string",
    "backbone": "string",
    "backbone_as_printed": "string",
    "method": "string",
    "variant": "string",
    "method_as_printed": "string",
    "eval_protocol": "string",
    "metric": "string",
    "qualifier": "string",
    "value_as_printed": "string",
    "unit_as_printed": "string",
    "value": "float64",
    "unit": "string",
    "value_macs": "float64",
    "conversion": "string",
    "unit_inferred": "bool",
    "status": "string",
    "status_as_printed": "string",
    "source_field": "string",
    "source_line": "int64",
    "source_url": "string",
    "notes": "string",
}

STATUSES = ("exact", "exact-secondary", "derived", "approximate")  # strongest first
QUALIFIERS = ("", "up to", "≈", "range-min", "range-max")

# metric -> canonical unit. "pp" = percentage points; "x" = ratio full cost / model cost.
METRICS: dict[str, str] = {
    "top1_acc": "%",
    "top1_err": "%",
    "top5_acc": "%",
    "baseline_top1_acc": "%",
    "delta_top1_acc": "pp",
    "top1_acc_gain": "pp",
    "macs": "MACs",
    "macs_std": "MACs",
    "macs_reduction": "%",
    "speedup": "x",
    "block_exec_ratio": "%",
    "block_exec_reduction": "%",
    "layer_exec_ratio": "%",
    "params": "count",
    "params_reduction": "%",
}
COST_METRICS = ("macs", "macs_std")  # metrics whose value is a MAC count
PERCENT_METRICS = tuple(m for m, unit in METRICS.items() if unit == "%")

# The suite's dataset ids (DESIGN §5) plus the ones only published numbers use.
DATASET_IDS = (
    "digits", "fashion-mnist", "cifar10", "cifar100", "imagenet", "ilsvrc10", "lfw-b", "svhn",
)  # fmt: skip
_DATASETS = {
    "CIFAR-10": "cifar10",
    "CIFAR-100": "cifar100",
    "ImageNet": "imagenet",
    "ImageNet val": "imagenet",  # the suite's `test` split of ImageNet is the official val set
    "SVHN": "svhn",
}

# Exact MACs of the full backbones (batch 1, conv + linear, dataset resolution), used to turn a
# published reduction or speed-up into implied MACs. CIFAR ResNets: option-A shortcuts, closed
# form (DESIGN §3); ImageNet: torchvision builders at 224x224 (torch.utils.flop_counter / 2,
# equal to the weights' `_ops` metadata). tests/benchmarks/test_paper.py recomputes every entry.
FULL_MODEL_MACS: dict[tuple[str, str], int] = {
    ("cifar10", "resnet20"): 40_551_040,
    ("cifar10", "resnet32"): 68_862_592,
    ("cifar10", "resnet44"): 97_174_144,
    ("cifar10", "resnet56"): 125_485_696,
    ("cifar10", "resnet110"): 252_887_680,
    ("cifar10", "vgg16"): 313_463_808,  # Li et al.'s CIFAR VGG-16: 13 convs + FC 512-512-10
    ("cifar100", "resnet20"): 40_556_800,
    ("cifar100", "resnet32"): 68_868_352,
    ("cifar100", "resnet44"): 97_179_904,
    ("cifar100", "resnet56"): 125_491_456,
    ("cifar100", "resnet110"): 252_893_440,
    ("imagenet", "resnet18"): 1_814_073_344,
    ("imagenet", "resnet34"): 3_663_761_408,
    ("imagenet", "resnet50"): 4_089_184_256,
    ("imagenet", "resnet101"): 7_801_405_440,
    ("imagenet", "vgg16"): 15_470_264_320,
    ("imagenet", "mobilenet_v2"): 300_774_272,
}


@dataclass(frozen=True)
class PaperInfo:
    title: str
    authors: str


# Titles and authors of the sources the reference names, keyed by its `paper` column. Repos and
# docs are named by what they are; an unknown key gets empty cells, not an error.
PAPERS: dict[str, PaperInfo] = {
    "HE16": PaperInfo(
        "Deep Residual Learning for Image Recognition",
        "Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun",
    ),
    "AKA": PaperInfo("akamaster/pytorch_resnet_cifar10 (GitHub repository)", ""),
    "CHENYAOFO": PaperInfo("chenyaofo/pytorch-cifar-models (GitHub repository)", ""),
    "SKIP18": PaperInfo(
        "SkipNet: Learning Dynamic Routing in Convolutional Networks",
        "Xin Wang, Fisher Yu, Zi-Yi Dou, Trevor Darrell, Joseph E. Gonzalez",
    ),
    "SKIP18-repo": PaperInfo("ucbdrive/skipnet (GitHub repository of SkipNet)", ""),
    "LI17": PaperInfo(
        "Pruning Filters for Efficient ConvNets",
        "Hao Li, Asim Kadav, Igor Durdanovic, Hanan Samet, Hans Peter Graf",
    ),
    "LIU17": PaperInfo(
        "Learning Efficient Convolutional Networks through Network Slimming",
        "Zhuang Liu, Jianguo Li, Zhiqiang Shen, Gao Huang, Shoumeng Yan, Changshui Zhang",
    ),
    "TV": PaperInfo("torchvision models and pre-trained weights (documentation)", ""),
    "TIMM": PaperInfo("huggingface/pytorch-image-models results tables (GitHub repository)", ""),
    "TP": PaperInfo("VainF/Torch-Pruning reproduce/readme.md (GitHub repository)", ""),
    "TP-wip": PaperInfo("VainF/Torch-Pruning benchmarks.md (GitHub repository)", ""),
    "PPSM": PaperInfo("", ""),
    "NNI": PaperInfo("microsoft/nni Pruner documentation (GitHub repository)", ""),
    "RETHINK": PaperInfo(
        "Rethinking the Value of Network Pruning",
        "Zhuang Liu, Mingjie Sun, Tinghui Zhou, Gao Huang, Trevor Darrell",
    ),
    "BD18-repo": PaperInfo(
        "BlockDrop: Dynamic Inference Paths in Residual Networks (Tushar-N/blockdrop repository)",
        "Zuxuan Wu, Tushar Nagarajan, Abhishek Kumar, Steven Rennie, Larry S. Davis, "
        "Kristen Grauman, Rogerio Feris",
    ),
    "AIG": PaperInfo(
        "Convolutional Networks with Adaptive Inference Graphs", "Andreas Veit, Serge Belongie"
    ),
    "FBS": PaperInfo(
        "Dynamic Channel Pruning: Feature Boosting and Suppression",
        "Xitong Gao, Yiren Zhao, Łukasz Dudziak, Robert Mullins, Cheng-zhong Xu",
    ),
    "CG": PaperInfo(
        "Channel Gating Neural Networks",
        "Weizhe Hua, Yuan Zhou, Christopher De Sa, Zhiru Zhang, G. Edward Suh",
    ),
    "LCNET": PaperInfo(
        "Fully Dynamic Inference with Deep Neural Networks",
        "Wenhan Xia, Hongxu Yin, Xiaoliang Dai, Niraj K. Jha",
    ),
}


# --------------------------------------------------------------------------------------------
# Numbers


_NUM = r"\d+(?:\.\d+)?(?:E[+-]?\d+)?[KMG]?"
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def parse_number(text: str) -> Decimal:
    """Parse a printed count: '40.55M', '1.25E8', '11.3E9', '11,689,512', '93.03', '+0.38'."""
    s = text.strip().replace("−", "-")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?(?:E[+-]?\d+)?)([KMG]?)", s)
    if not m:
        raise ValueError(f"not a number: {text!r}")
    return Decimal(m.group(1)) * _SCALE[m.group(2)]


def format_decimal(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros; the same value, the same text."""
    if value == value.to_integral_value():
        return str(int(value))  # also turns -0 into 0
    return format(value.normalize(), "f")


def _round_macs(value: Decimal) -> Decimal:
    return value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)


# --------------------------------------------------------------------------------------------
# Name normalization


_BACKBONES: tuple[tuple[str, str], ...] = (
    (r"ResNet-164 \(pre-act bottleneck\)", "preact_resnet164"),
    (r"ResNet-(\d+)(?: [ABC])?", "resnet{0}"),
    (r"VGG-16(?:-BN| \(.*\))?", "vgg16"),
    (r"VGGNet-19|VGGNet \(19-layer CIFAR variant\)", "vgg19"),
    (r"VGG-A \(11-layer, BN\)", "vgg11"),
    (r"MobileNetV2 (?:x)?1\.0", "mobilenet_v2"),
    (r"DenseNet-(\d+)", "densenet{0}"),
    (r"M-CifarNet", "m_cifarnet"),
    (r"not stated in abstract|several networks \(.*\)", ""),  # a claim over unnamed models
)


def normalize_backbone(printed: str) -> str:
    """Suite backbone id for a printed architecture name ('ResNet-56' -> 'resnet56')."""
    for pattern, template in _BACKBONES:
        m = re.fullmatch(pattern, printed.strip())
        if m:
            return template.format(*m.groups())
    raise ValueError(f"unknown backbone {printed!r}")


def normalize_dataset(printed: str) -> str:
    try:
        return _DATASETS[printed.strip()]
    except KeyError:
        raise ValueError(f"unknown dataset {printed!r}; known: {', '.join(_DATASETS)}") from None


# Torch-Pruning table labels -> method ids (the table's variant is its speed-up).
_TP_METHODS = {
    "NISP": ("nisp", ""),
    "FPGM ('Geometric')": ("fpgm", ""),
    "Polarization reg. ('Polar')": ("polarization", ""),
    "'CP' (label cites Pruning Filters [Li17]; numbers match He et al. ICCV'17 Channel Pruning)": (
        "channel_pruning",
        "",
    ),
    "AMC": ("amc", ""),
    "HRank": ("hrank", ""),
    "SFP": ("sfp", ""),
    "ResRep": ("resrep", ""),
    "Group-L1 (TP re-impl.)": ("group_l1", ""),
    "Group-BN / slimming-style (TP re-impl.)": ("group_bn", ""),
    "Group-GReg (TP re-impl.)": ("group_greg", ""),
    "DepGraph w/o sparse learning": ("depgraph", "no-sl-"),
    "DepGraph w/o SL": ("depgraph", "no-sl-"),
    "DepGraph (Ours)": ("depgraph", ""),
    "GBN": ("gbn", ""),
    "AFP": ("afp", ""),
    "C-SGD": ("c_sgd", ""),
    "GReg-1": ("greg", "1-"),
    "GReg-2": ("greg", "2-"),
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-")


def _method_variant(src: dict[str, str]) -> tuple[str, str]:
    """(method id, variant) for a source row; unknown wording is an error, never a guess."""
    paper, text = src["paper"], src["method_variant"].strip()

    def m(pattern: str) -> re.Match[str] | None:
        return re.fullmatch(pattern, text)

    if paper == "HE16":
        if m(r"baseline \(He et al\.\)|architecture complexity"):
            return "static", ""
        if g := m(r"option ([ABC])(?: \(identity\))?"):
            return "static", f"option-{g.group(1).lower()}"
        if m(r"single-model, multi-scale fully-conv testing"):
            suffix = re.fullmatch(r"ResNet-\d+(?: ([BC]))?", src["backbone"].strip())
            option = suffix.group(1) if suffix else None
            return "static", f"option-{option.lower()}" if option else ""
    if paper in ("LI17", "LIU17") and text == "baseline":
        return "static", ""
    if paper == "AKA" and text.startswith("independent PyTorch reproduction"):
        return "static", "reproduction"
    if paper == "CHENYAOFO" and text.startswith("pretrained model zoo"):
        return "static", "model-zoo"
    if paper == "SKIP18" and text.startswith("static baseline used by SkipNet"):
        return "static", "skipnet-base"
    if paper == "TV" and (g := m(r"torchvision (IMAGENET1K_V\d)(?: \(.*\))?")):
        return "static", f"tv-{g.group(1).lower()}"
    if paper == "TIMM" and (g := m(r"timm [\w]+\.(\w+) @ \d+px")):
        return "static", f"timm-{g.group(1)}"
    if paper == "LI17" and (g := m(r"L1-norm filter pruning: (.+)")):
        rest = g.group(1)
        if rest == "baseline":
            return "l1_filter", "baseline"
        if p := re.fullmatch(r"[\w-]+?-pruned-([A-C])( scratch-train)?", rest):
            return "l1_filter", f"pruned-{p.group(1).lower()}" + ("-scratch" if p.group(2) else "")
    if paper == "LIU17" and (g := m(r"Network Slimming: (.+)")):
        rest = g.group(1)
        if rest == "baseline":
            return "network_slimming", "baseline"
        if p := re.fullmatch(r"(\d+)% (?:channels )?pruned", rest):
            return "network_slimming", f"pruned-{p.group(1)}pct"
    if paper == "TP" and text in _TP_METHODS:
        method, prefix = _TP_METHODS[text]
        speedup = re.match(r"\s*(\d+(?:\.\d+)?x)", src["flop_reduction"])
        if speedup:
            return method, prefix + speedup.group(1)
    if paper == "PPSM" and text.startswith("HRank"):
        return "hrank", ""
    if paper == "TP-wip" and text in ("ThiNet", "SFP", "FPGM"):
        return text.lower(), ""
    if paper == "NNI":
        if m(r"L1 baseline: paper / NNI"):
            return "l1_filter", "baseline"
        if g := m(r"VGG-16-pruned-([A-C]): paper / NNI"):
            return "l1_filter", f"pruned-{g.group(1).lower()}"
        if g := m(r"Network Slimming (\d+)% channels: paper / NNI"):
            return "network_slimming", f"pruned-{g.group(1)}pct"
    if paper == "RETHINK" and (
        g := m(r"L1-norm ResNet34-([AB]), fine-tuned \(re-implementation\)")
    ):
        return "l1_filter", f"pruned-{g.group(1).lower()}"
    if paper in ("SKIP18", "SKIP18-repo") and text.startswith("SkipNet"):
        if "HRL" not in text:
            return "skipnet", "sp"
        return "skipnet", "hrl-sp-rnn" if "recurrent" in text else "hrl-sp"
    if paper == "BD18-repo" and (g := m(r"BlockDrop \(released finetuned ckpt, gamma=(\d+)\)")):
        return "blockdrop", f"gamma{g.group(1)}"
    if paper == "AIG" and (g := m(r"ConvNet-AIG \d+(?:, t=([\d.]+))?")):
        return "convnet_aig", f"t{g.group(1)}" if g.group(1) else ""
    if paper == "FBS" and (g := m(r"FBS(?:, (\d+)% density)?")):
        return "fbs", f"density{g.group(1)}" if g.group(1) else ""
    if paper == "CG" and (g := m(r"Channel Gating( \+ knowledge distillation)?")):
        return "channel_gating", "kd" if g.group(1) else ""
    if paper == "LCNET" and text.startswith("LC-Net"):
        return "lcnet", ""
    raise ValueError(f"no method rule for paper {paper!r}, method_variant {text!r}")


def _eval_protocol(src: dict[str, str]) -> str:
    """How the test set was evaluated, where the source says (ImageNet crops differ a lot)."""
    if "10-crop" in src["table_figure"]:
        return "10-crop"
    if "multi-scale" in src["method_variant"]:
        return "multi-scale-fc"
    if m := re.search(r"@ (\d+)px", src["method_variant"]):
        return f"center-crop-{m.group(1)}"
    if src["paper"] == "TV":
        return "center-crop-224"
    if "single center-crop" in src["notes"]:
        return "center-crop"
    return ""


def _table_slug(text: str) -> str:
    if m := re.match(r"Table (\d+)\s*(?:\((\w)\))?(?:/(\d+))?", text):
        return f"t{m.group(1)}{m.group(2) or ''}" + (f"-{m.group(3)}" if m.group(3) else "")
    if m := re.match(r"Sec\. ([\d.]+)", text):
        return f"s{m.group(1)}"
    if text.startswith("Abstract"):
        return "abstract"
    if re.search(r"readme", text, re.IGNORECASE):
        return "readme"
    if text.endswith(" meta"):
        return "meta"
    if text.endswith(" table"):
        return "table"
    if text.startswith("results-"):
        return "csv"
    if "Pruner" in text:
        return "docs"
    if "summary" in text:
        return "summary"
    return _slug(text.split()[0])


# --------------------------------------------------------------------------------------------
# Status


_FIELD_GROUPS = {
    "err": "err",
    "acc": "acc",
    "params": "params",
    "macs": "cost",
    "flop": "cost",
    "flops": "cost",
    "reduction": "reduction",
}
_METRIC_GROUP = {
    "top1_acc": "acc",
    "top5_acc": "acc",
    "baseline_top1_acc": "acc",
    "delta_top1_acc": "acc",
    "top1_acc_gain": "acc",
    "top1_err": "err",
    "params": "params",
    "params_reduction": "params",
    "macs": "cost",
    "macs_std": "cost",
    "block_exec_ratio": "cost",
    "layer_exec_ratio": "cost",
    "macs_reduction": "reduction",
    "speedup": "speedup",  # no status clause names it: "reduction % derived" means the %
    "block_exec_reduction": "reduction",
}


def _split_top_level(text: str, sep: str = ";") -> list[str]:
    """Split on `sep` outside parentheses ("exact (abstract; 'up to')" is one clause)."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _weakest(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.index)


def parse_status(text: str) -> tuple[str | None, dict[str, str]]:
    """Parse a source status into (default status, {field group: status}).

    'err/params exact; acc derived (100-err); MACs derived' -> (None, {err: exact, params:
    exact, acc: derived, cost: derived}). Clauses about units ('FLOP unit inferred') carry no
    status; several unattributed clauses ('exact-secondary (...); approximate') resolve to the
    weakest, and 'derived (approx.)' to approximate.
    """
    default: list[str] = []
    per_field: dict[str, list[str]] = {}
    for clause in _split_top_level(text):
        m = re.fullmatch(
            r"(?:(?P<fields>[A-Za-z/ %]+?) )?(?P<status>exact-secondary|exact|derived|approximate)"
            r"(?P<rest>\b.*)?",
            clause,
        )
        if m is None:
            if re.search(r"\bunit\b|table values not found", clause):
                continue  # a remark on the unit or on what was looked for, not a status
            raise ValueError(f"unrecognized status clause {clause!r}")
        status = m.group("status")
        if status == "derived" and "approx" in (m.group("rest") or ""):
            status = "approximate"
        if not m.group("fields"):
            default.append(status)
            continue
        for name in m.group("fields").replace("%", "").split("/"):
            group = _FIELD_GROUPS.get(name.strip().lower())
            if group is None:
                raise ValueError(f"unknown field {name!r} in status clause {clause!r}")
            per_field.setdefault(group, []).append(status)
    return (
        _weakest(default) if default else None,
        {group: _weakest(s) for group, s in per_field.items()},
    )


# --------------------------------------------------------------------------------------------
# Cells -> numbers


@dataclass(frozen=True)
class _Number:
    """One number found in a source cell, before it becomes an output row."""

    metric: str
    value: Decimal
    printed: str
    field: str
    unit_printed: str = ""
    qualifier: str = ""
    status: str | None = None  # overrides the status parsed from the row's status column
    conversion: str = ""
    variant_suffix: str = ""
    variant: str | None = None  # replaces the row's variant (numbers from notes)
    value_macs: Decimal | None = None
    unit_inferred: bool = False


def _cost_unit(unit: str) -> tuple[Decimal, str, bool]:
    """(MACs per printed unit, conversion text, inferred?) for a cost unit as printed."""
    inferred = bool(re.search(r"inferred|not stated", unit))
    if re.search(r"2\s*×\s*MACs", unit):
        return Decimal("0.5"), "FLOPs ÷ 2 (FLOPs = 2×MACs)", inferred
    if re.search(r"MACs|MAdds|multiply-adds", unit):
        return Decimal(1), "", inferred
    raise ValueError(f"unknown cost unit {unit!r}")


def _scale_note(printed: str) -> str:
    """'M = 1e6' for a printed suffix multiplier; scientific notation needs no note."""
    suffix = printed.strip()[-1:]
    exponent = {"K": 3, "M": 6, "G": 9}.get(suffix)
    return f"{suffix} = 1e{exponent}" if exponent else ""


def _cost_numbers(src: dict[str, str]) -> list[_Number]:
    cell, unit = src["flops"].strip(), src["flops_unit"].strip()
    if not cell:
        return []
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)% of (full|layers executed)", cell):
        if "block-execution" in unit:
            metric = "block_exec_ratio"
        elif "layer-execution" in unit:
            metric = "layer_exec_ratio"
        else:
            raise ValueError(f"a '% of full' cost needs a block/layer-execution unit, got {unit!r}")
        return [
            _Number(metric, Decimal(m.group(1)), cell, "flops", unit,
                    conversion="not a MAC count: fraction of blocks/layers executed")
        ]  # fmt: skip
    m = re.fullmatch(rf"({_NUM})(?:\s*±\s*({_NUM}))?", cell)
    if not m:
        raise ValueError(f"unparsable cost {cell!r}")
    factor, conversion, inferred = _cost_unit(unit)
    numbers = []
    for metric, printed in (("macs", m.group(1)), ("macs_std", m.group(2))):
        if printed is None:
            continue
        macs = _round_macs(parse_number(printed) * factor)
        steps = "; ".join(s for s in (_scale_note(printed), conversion) if s)
        numbers.append(
            _Number(metric, macs, printed if m.group(2) else cell, "flops", unit,
                    conversion=steps, value_macs=macs, unit_inferred=inferred)
        )  # fmt: skip
    return numbers


_REDUCTION_TRAILERS = ("", "less computation", "fewer FLOPs", "compute saving", "MACs", "FLOPs")


def _reduction_numbers(src: dict[str, str], cost: list[_Number]) -> list[_Number]:
    cell = src["flop_reduction"].strip()
    if not cell:
        return []
    unit = src["flops_unit"].strip()
    primary, _, paren = cell.partition(" (")
    m = re.fullmatch(
        r"(?P<q>up to |≈)?(?P<lo>\d+(?:\.\d+)?)(?:-(?P<hi>\d+(?:\.\d+)?))?\s*(?P<u>%|x|×)"
        r"(?:\s+(?P<trail>.+))?",
        primary.strip(),
    )
    if not m or (m.group("trail") or "") not in _REDUCTION_TRAILERS:
        raise ValueError(f"unparsable reduction {cell!r}")
    qualifier = (m.group("q") or "").strip()
    is_ratio = m.group("u") in ("x", "×")
    derived = paren.startswith("derived")  # "≈64% (derived: ...)" derives the number itself
    single_number = not re.search(r"\(= \d", cell)
    printed = cell if single_number else primary
    block = [n for n in cost if n.metric == "block_exec_ratio"]
    if is_ratio:
        metric = "speedup"
    elif block:
        metric = "block_exec_reduction"
    else:
        metric = "macs_reduction"
    conversion = ""
    status = "derived" if derived else None
    if metric == "block_exec_reduction":
        if Decimal(m.group("lo")) != 100 - block[0].value:
            raise ValueError(f"block reduction {cell!r} is not 100 - {block[0].value}")
        conversion, status = "100 − block_exec_ratio", "derived"
    bounds = [("", m.group("lo"))]
    if m.group("hi"):
        bounds = [("range-min", m.group("lo")), ("range-max", m.group("hi"))]
    numbers = [
        _Number(metric, Decimal(v), printed, "flop_reduction", unit,
                qualifier=qualifier or q, status=status, conversion=conversion)
        for q, v in bounds
    ]  # fmt: skip
    if s := re.search(r"= (\d+(?:\.\d+)?)% MAC reduction, derived", cell):
        numbers.append(
            _Number("macs_reduction", Decimal(s.group(1)), s.group(0), "flop_reduction", unit,
                    status="derived", conversion="1 − 1/speedup")
        )  # fmt: skip
    return numbers


def _accuracy_numbers(src: dict[str, str]) -> list[_Number]:
    numbers = []
    labels = re.search(r": (\w+) / (\w+)$", src["method_variant"])
    for field, metric in (("top1_acc_pct", "top1_acc"), ("top1_err_pct", "top1_err")):
        cell = src[field].strip()
        if not cell:
            continue
        parts = [p.strip() for p in cell.split(" / ")]
        if len(parts) == 2 and labels:  # "paper / NNI": one number per reporter
            for label, part in zip(labels.groups(), parts, strict=True):
                numbers.append(
                    _Number(metric, parse_number(part), part, field, "%",
                            variant_suffix=f"/{label.lower()}")
                )  # fmt: skip
        elif len(parts) == 1:
            numbers.append(_Number(metric, parse_number(cell), cell, field, "%"))
        else:
            raise ValueError(f"unparsable {field} {cell!r}")
    if len(numbers) == 2 and [n.metric for n in numbers] == ["top1_acc", "top1_err"]:
        acc, err = numbers
        if acc.value + err.value == 100:  # the reference fills acc in as 100 - printed error
            numbers[0] = replace(acc, conversion="100 − top1_err")
    return numbers


def _params_numbers(src: dict[str, str]) -> list[_Number]:
    cell = src["params"].strip()
    if not cell:
        return []
    m = re.fullmatch(
        rf"({_NUM}|\d{{1,3}}(?:,\d{{3}})+)"
        r"(?: \((?:pruned (?P<a>[\d.]+)%|(?P<b>[\d.]+)% pruned)\))?",
        cell,
    )
    if not m:
        raise ValueError(f"unparsable params {cell!r}")
    count = parse_number(m.group(1))
    reduced = m.group("a") or m.group("b")
    numbers = [
        _Number("params", count, m.group(1) if reduced else cell, "params", "",
                conversion=_scale_note(m.group(1)))
    ]  # fmt: skip
    if reduced:
        printed = re.search(r"\((.*)\)", cell).group(1)
        numbers.append(_Number("params_reduction", Decimal(reduced), printed, "params", "%"))
    return numbers


# Numbers printed by the source but carried in the reference's notes column. Only these are
# extracted; docs/published-numbers.md lists the note numbers deliberately left as text.
_NOTE_NUMBERS: tuple[tuple[str, str, str, str], ...] = (
    # (paper, regex with one number group, metric, qualifier)
    ("TP", r"baseline acc (\d+\.\d+)", "baseline_top1_acc", ""),
    ("TP", r"Δacc ([+-]\d+\.\d+)", "delta_top1_acc", ""),
    ("PPSM", r"^baseline (\d+\.\d+)", "baseline_top1_acc", ""),
    ("TP-wip", r"^original acc (\d+\.\d+)", "baseline_top1_acc", ""),
    ("SKIP18-repo", r"top-5 (\d+\.\d+)", "top5_acc", ""),
    ("LI17", r"params pruned (\d+\.\d+)%", "params_reduction", ""),
    ("LCNET", r"up to (\d+(?:\.\d+)?)% higher (?:top-1 )?accuracy", "top1_acc_gain", "up to"),
)


def _note_numbers(src: dict[str, str], variant: str) -> list[_Number]:
    notes = src["notes"]
    numbers = []
    for paper, pattern, metric, qualifier in _NOTE_NUMBERS:
        if src["paper"] != paper:
            continue
        for m in re.finditer(pattern, notes, re.IGNORECASE):
            numbers.append(
                _Number(metric, Decimal(m.group(1)), m.group(0), "notes",
                        "%" if METRICS[metric] == "%" else "", qualifier=qualifier)
            )  # fmt: skip
    if src["paper"] == "RETHINK":  # the README's scratch-trained rows for the same pruned model
        for m in re.finditer(r"Scratch-([EB]) (\d+\.\d+)", notes):
            numbers.append(
                _Number("top1_acc", Decimal(m.group(2)), m.group(0), "notes", "%",
                        variant=f"{variant}-scratch-{m.group(1).lower()}")
            )  # fmt: skip
    return numbers


# --------------------------------------------------------------------------------------------
# Build


def read_source(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """Read the reference CSV as (line number, row) pairs; check its header."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"published-numbers source '{path}' does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = tuple(reader.fieldnames or ())
            if header != SOURCE_COLUMNS:
                raise ConfigError(
                    f"{path}: header must be {', '.join(SOURCE_COLUMNS)}; got {', '.join(header)}"
                )
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise ConfigError(f"{path}:{reader.line_num}: expected {len(header)} fields")
                rows.append((reader.line_num, row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a UTF-8 CSV file ({exc})") from None
    return rows


def _row_numbers(src: dict[str, str], variant: str) -> list[_Number]:
    cost = _cost_numbers(src)
    return (
        _accuracy_numbers(src)
        + cost
        + _reduction_numbers(src, cost)
        + _params_numbers(src)
        + _note_numbers(src, variant)
    )


def _implied_macs(number: _Number, dataset: str, backbone: str) -> tuple[Decimal | None, str]:
    """MACs implied by a reduction or speed-up, on the suite's count of the full backbone."""
    full = FULL_MODEL_MACS.get((dataset, backbone))
    if full is None or number.qualifier not in ("", "≈"):
        return None, ""
    if number.metric == "macs_reduction":
        macs = _round_macs(full * (1 - number.value / 100))
        return macs, f"implied MACs = {full} × (1 − {format_decimal(number.value)}%)"
    if number.metric == "speedup":
        macs = _round_macs(full / number.value)
        return macs, f"implied MACs = {full} ÷ {format_decimal(number.value)}"
    return None, ""


def build_rows(source: str | Path = DEFAULT_SOURCE) -> list[dict[str, str]]:
    """Normalize the reference CSV into output rows (strings, in `COLUMNS` order)."""
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for line, src in read_source(source):
        where = f"{source}:{line}"
        try:
            dataset = normalize_dataset(src["dataset"])
            backbone = normalize_backbone(src["backbone"])
            method, variant = _method_variant(src)
            default_status, field_status = parse_status(src["status"])
            numbers = _row_numbers(src, variant)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not src["source_url"].startswith(("https://", "http://")):
            raise ConfigError(
                f"{where}: source_url must be an http(s) URL, got {src['source_url']!r}"
            )
        info = PAPERS.get(src["paper"], PaperInfo("", ""))
        protocol = _eval_protocol(src)
        for number in numbers:
            status = (
                number.status or field_status.get(_METRIC_GROUP[number.metric]) or default_status
            )
            if status is None:
                raise ConfigError(
                    f"{where}: status {src['status']!r} says nothing about {number.metric}"
                )
            if number.qualifier == "up to":
                status = "approximate"  # a best case over unstated settings, not a table entry
            row_variant = number.variant if number.variant is not None else variant
            row_variant += number.variant_suffix
            value_macs, conversion = number.value_macs, number.conversion
            if value_macs is None and number.metric in ("macs_reduction", "speedup"):
                value_macs, implied = _implied_macs(number, dataset, backbone)
                conversion = "; ".join(c for c in (conversion, implied) if c)
            parts = [src["paper"], _table_slug(src["table_figure"]), dataset, backbone, method,
                     row_variant, protocol, number.metric,
                     number.qualifier if number.qualifier.startswith("range") else ""]  # fmt: skip
            row_id = "-".join(_slug(p) for p in parts if p)
            if row_id in seen:
                raise ConfigError(f"{where}: id {row_id!r} already made by line {seen[row_id]}")
            seen[row_id] = line
            out.append({
                "id": row_id,
                "section": src["section"],
                "paper": src["paper"],
                "paper_title": info.title,
                "authors": info.authors,
                "table_figure": src["table_figure"],
                "dataset": dataset,
                "split": "test",
                "backbone": backbone,
                "backbone_as_printed": src["backbone"],
                "method": method,
                "variant": row_variant,
                "method_as_printed": src["method_variant"],
                "eval_protocol": protocol,
                "metric": number.metric,
                "qualifier": number.qualifier,
                "value_as_printed": number.printed,
                "unit_as_printed": number.unit_printed,
                "value": format_decimal(number.value),
                "unit": METRICS[number.metric],
                "value_macs": "" if value_macs is None else format_decimal(value_macs),
                "conversion": conversion,
                "unit_inferred": "true" if number.unit_inferred else "false",
                "status": status,
                "status_as_printed": src["status"],
                "source_field": number.field,
                "source_line": str(line),
                "source_url": src["source_url"],
                "notes": src["notes"],
            })  # fmt: skip
    return out


def render_csv(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def build(
    source: str | Path = DEFAULT_SOURCE,
    out: str | Path = DEFAULT_PUBLISHED,
    copy_source_to: str | Path | None = DEFAULT_SOURCE,
) -> int:
    """Build `out` from `source` atomically and return its row count.

    A verbatim copy of `source` is kept at `copy_source_to` (the checked-in reference the
    drift test rebuilds from). Everything is parsed and checked before anything is written,
    so bad input leaves the old files in place.
    """
    rows = build_rows(source)
    text = render_csv(rows)
    if copy_source_to is not None and Path(source).resolve() != Path(copy_source_to).resolve():
        atomic_write_bytes(copy_source_to, Path(source).read_bytes())
    atomic_write_text(out, text)
    return len(rows)


def check(source: str | Path = DEFAULT_SOURCE, published: str | Path = DEFAULT_PUBLISHED) -> bool:
    """True if `published` is byte-identical to a fresh build from `source`."""
    published = Path(published)
    return published.is_file() and published.read_bytes() == render_csv(build_rows(source)).encode(
        "utf-8"
    )


# --------------------------------------------------------------------------------------------
# Load and select


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Read `published.csv` with the declared dtypes (`COLUMNS`); missing numbers are NaN."""
    import pandas as pd

    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if path.exists() and not path.is_file():
        raise ConfigError(f"published numbers '{path}' is not a regular file (a folder or a device?)")
    if not path.is_file():
        raise DataNotFoundError(
            f"published numbers '{path}' not found; build it with "
            "`python -m benchmarks.paper build`, or pass path="
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"published numbers '{path}' is not a CSV ({type(exc).__name__})") from None
    if list(raw.columns) != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in raw.columns]
        extra = [c for c in raw.columns if c not in COLUMNS]
        raise ConfigError(
            f"{path}: columns do not match the published-numbers schema "
            f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})"
        )
    df = pd.DataFrame(index=raw.index)
    for column, dtype in COLUMNS.items():
        values = raw[column]
        try:
            if dtype == "float64":
                df[column] = pd.to_numeric(values.replace("", None), errors="raise").astype(
                    "float64"
                )
            elif dtype == "int64":
                df[column] = pd.to_numeric(values, errors="raise").astype("int64")
            elif dtype == "bool":
                bad = sorted(set(values) - {"true", "false"})
                if bad:
                    raise ValueError(f"expected true/false, got {bad[0]!r}")
                df[column] = values == "true"
            else:
                df[column] = values.astype("string")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: column '{column}': {exc}") from None
    bad_status = sorted(set(df["status"]) - set(STATUSES))
    if bad_status:
        raise ConfigError(
            f"{path}: column 'status' has {bad_status[0]!r}; expected one of {', '.join(STATUSES)}"
        )
    return df


def select_published(
    df: pd.DataFrame | None = None,
    *,
    dataset: str | Iterable[str] | None = None,
    backbone: str | Iterable[str] | None = None,
    method: str | Iterable[str] | None = None,
    variant: str | Iterable[str] | None = None,
    metric: str | Iterable[str] | None = None,
    paper: str | Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Rows matching every given filter (None = any; a list = any of its values).

    Unknown dataset, metric or status names raise `UnknownNameError` with suggestions: they
    are fixed vocabularies. A backbone, method or variant with no published number gives an
    empty frame (most suite models have none), unless `strict=True`.
    """
    if df is None:
        df = load_published()
    vocab = {
        "dataset": set(DATASET_IDS),
        "metric": set(METRICS),
        "status": set(STATUSES),
    }
    mask = None
    for column, wanted in (("dataset", dataset), ("backbone", backbone), ("method", method),
                           ("variant", variant), ("metric", metric), ("paper", paper),
                           ("status", status)):  # fmt: skip
        if wanted is None:
            continue
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        present = set(df[column].dropna())
        for value in values:
            fixed = column in vocab and value not in vocab[column] | present
            if fixed or (strict and value not in present):
                shown = vocab.get(column, set()) | present
                raise UnknownNameError(column, value, sorted(v for v in shown if v))
        hit = df[column].isin(values)
        mask = hit if mask is None else mask & hit
    return df if mask is None else df[mask.fillna(False)]


# --------------------------------------------------------------------------------------------
# Command line: python -m benchmarks.paper build|check [SOURCE]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from benchmarks.errors import DynbenchError

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.paper", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("build", "rewrite published.csv from SOURCE"),
                            ("check", "exit 1 if published.csv differs from a fresh build")):  # fmt: skip
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE),
                       help=f"reference CSV (default: {DEFAULT_SOURCE.relative_to(REPO_ROOT)})")  # fmt: skip
        p.add_argument("--out", default=str(DEFAULT_PUBLISHED), help="published.csv to write/check")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            # The checked-in copy of the source follows only the checked-in table.
            keep_copy = Path(args.out).resolve() == DEFAULT_PUBLISHED.resolve()
            count = build(args.source, args.out, DEFAULT_SOURCE if keep_copy else None)
            print(f"wrote {count} rows to {args.out}")
            return 0
        if check(args.source, args.out):
            print(f"{args.out} is up to date with {args.source}")
            return 0
        print(f"{args.out} differs from a fresh build of {args.source}; run "
              f"`python -m benchmarks.paper build {args.source}`", file=sys.stderr)  # fmt: skip
        return 1
    except DynbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
