"""Static baselines: every registered model builds for grayscale and colour datasets, and the
paper architectures have exactly the published MACs and parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from baselines.static.cifar_resnet import BasicBlock, CifarResNet, ZeroPadShortcut
from benchmarks.cost import count_macs, count_params
from benchmarks.registry import create_model, get_model_spec, list_models

STATIC = list_models(kind="static")
IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")


def flop_counter_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Independent cross-check: torch's FLOP counter counts 2 FLOPs per conv/linear MAC."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape, device=device))
    return counter.get_total_flops() // 2


def _closed_form_cifar_resnet_macs(depth: int, shortcut: str = "A") -> int:
    """He et al. §4.2 by hand: stem, 3 stages of n blocks of two 3×3 convs, the linear layer."""
    n = (depth - 2) // 6
    macs = 3 * 16 * 9 * 32 * 32
    for width, size, in_width in ((16, 32, 16), (32, 16, 16), (64, 8, 32)):
        macs += in_width * width * 9 * size * size + width * width * 9 * size * size  # first block
        macs += (n - 1) * 2 * width * width * 9 * size * size
        if shortcut == "B" and in_width != width:
            macs += in_width * width * size * size  # 1×1 projection
    return macs + 64 * 10


# The brief's figures (He et al. / Li et al. Table 1 at 32×32, torchvision's docs at 224×224).
EXPECTED_MACS = {
    "cifar_resnet20": 40_551_040,
    "cifar_resnet32": 68_862_592,
    "cifar_resnet44": 97_174_144,
    "cifar_resnet56": 125_485_696,
    "cifar_resnet110": 252_887_680,
    "cifar_vgg16": 313_463_808,  # Li et al. Table 1: 3.13E8
    "cifar_vgg19": 398_136_320,  # Liu et al. Table 1: 7.97E8 FLOPs (2 × MACs)
    "mobilenetv2_cifar": 87_976_448,
    "resnet18": 1_814_073_344,
    "resnet34": 3_663_761_408,
    "resnet50": 4_089_184_256,
    "resnet101": 7_801_405_440,
    "mobilenet_v2": 300_774_272,
}
EXPECTED_PARAMS = {
    "cifar_resnet20": 269_722,  # 0.27M
    "cifar_resnet32": 464_154,  # 0.46M
    "cifar_resnet44": 658_586,  # 0.66M
    "cifar_resnet56": 853_018,  # 0.85M
    "cifar_resnet110": 1_727_962,  # 1.7M
    "cifar_vgg16": 14_987_722,  # 1.5E7
    "cifar_vgg19": 20_035_018,  # 20.04M
    "mobilenetv2_cifar": 2_236_682,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "mobilenet_v2": 3_504_872,
}
# Option B adds two 1×1 projections (16→32 at 16×16, 32→64 at 8×8) and their BNs.
for _depth in (20, 32, 44, 56, 110):
    EXPECTED_MACS[f"cifar_resnet{_depth}_b"] = EXPECTED_MACS[f"cifar_resnet{_depth}"] + 262_144
    EXPECTED_PARAMS[f"cifar_resnet{_depth}_b"] = EXPECTED_PARAMS[f"cifar_resnet{_depth}"] + 2_752


def test_registry_lists_the_paper_architectures():
    assert set(EXPECTED_MACS) <= set(STATIC)


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize(
    "in_chans,sizes,num_classes",
    [(1, (8, 28), 10), (3, (32,), 10)],
    ids=["grayscale-digits-fmnist", "colour-cifar10"],
)
def test_builds_for_any_dataset(name, in_chans, sizes, num_classes):
    """Shapes only (meta tensors): every registered static model, whoever wrote it, accepts
    the digits (8×8×1), Fashion-MNIST (28×28×1) and CIFAR-10 (32×32×3) input shapes."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
        for size in sizes:
            assert model(torch.empty(2, in_chans, size, size)).shape == (2, num_classes)
    assert model.arch_config == {
        "name": name,
        "kwargs": {"num_classes": num_classes, "in_chans": in_chans},
    }


OWN = sorted(EXPECTED_MACS)  # this package's models: also any class count (CIFAR-100, ImageNet)


@pytest.mark.parametrize("name", OWN)
def test_builds_for_cifar100_and_imagenet_class_counts(name):
    with torch.device("meta"):
        for classes in (100, 1000):
            model = create_model(name, num_classes=classes).eval()
            assert model(torch.empty(1, 3, 32, 32)).shape == (1, classes)


# One real forward per model family (the meta test above covers every id's shapes).
FAMILY_REPRESENTATIVES = [
    "cifar_resnet20", "cifar_resnet20_b", "cifar_vgg16", "cifar_vgg19", "mobilenetv2_cifar",
    "resnet18", "resnet50", "mobilenet_v2",
]


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_forward_with_real_weights_is_finite(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def _input_shape(name: str) -> tuple[int, int, int]:
    return (3, 224, 224) if name in IMAGENET else (3, 32, 32)


def _num_classes(name: str) -> int:
    return 1000 if name in IMAGENET else 10


# benchmarks.cost runs a real forward pass: the big ImageNet nets are marked slow.
_SLOW = {"resnet34", "resnet50", "resnet101"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in sorted(EXPECTED_MACS)]
)
def test_macs_and_params_are_exact(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=_num_classes(name))
    cost = count_macs(model, _input_shape(name))
    assert cost.macs == EXPECTED_MACS[name]
    assert cost.macs_theoretical == cost.macs and cost.macs_controller == 0
    assert cost.params == count_params(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_MACS))
def test_torch_flop_counter_agrees(name):
    with torch.device("meta"):  # shapes only: builds and counts without allocating weights
        model = create_model(name, num_classes=_num_classes(name))
    assert flop_counter_macs(model, _input_shape(name)) == EXPECTED_MACS[name]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_macs_match_the_closed_form(depth, shortcut):
    name = f"cifar_resnet{depth}" + ("_b" if shortcut == "B" else "")
    assert EXPECTED_MACS[name] == _closed_form_cifar_resnet_macs(depth, shortcut)


@pytest.mark.parametrize("name", OWN)
def test_registry_entries_name_their_paper(name):
    spec = get_model_spec(name)
    assert spec.kind == "static"
    assert spec.paper and spec.variant and spec.paper_url.startswith("https://")
    assert spec.datasets


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_exposes_its_blocks(shortcut):
    model = CifarResNet(20, shortcut=shortcut)
    assert len(model.stages) == 3 and all(len(stage) == 3 for stage in model.stages)
    blocks = model.blocks
    assert len(blocks) == 9 and all(isinstance(b, BasicBlock) for b in blocks)
    assert [b.downsample for b in blocks] == [False] * 3 + [True, False, False] * 2
    for block in blocks:
        for attr in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
            assert isinstance(getattr(block, attr), nn.Module)
    shortcut_params = sum(p.numel() for p in blocks[3].shortcut.parameters())
    if shortcut == "A":
        assert isinstance(blocks[3].shortcut, ZeroPadShortcut) and shortcut_params == 0
    else:
        assert shortcut_params == 16 * 32 + 2 * 32


def test_block_output_is_residual_plus_shortcut():
    torch.manual_seed(0)
    block = CifarResNet(20).blocks[3].eval()  # a downsampling option-A block
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(block.residual(x) + block.shortcut(x))
        assert torch.equal(block(x), expected)
    padded = block.shortcut(x)
    assert padded.shape == (2, 32, 4, 4)
    assert torch.equal(padded[:, :16], x[:, :, ::2, ::2]) and not padded[:, 16:].any()


def test_bad_architecture_arguments_are_rejected():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="mid_channels"):
        CifarResNet(20, mid_channels=[16] * 8)
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(20, shortcut="C")
