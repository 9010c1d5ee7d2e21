"""Protocols and training budgets (PROTOCOL.md §1-2): when two numbers may be compared.

A **protocol** is everything about the inputs that changes a number without the model
changing: the dataset, the task (10-way, or a binary `positive_classes` task scored by
F-score), the hashes of the split manifests, the dataset options, the input resolution and
channels the models see, and the preprocessing. Its id is a readable name plus a hash of
those fields, e.g. `digits-8px-3f1a` or `fashion-mnist-32px-bin-9c02`:

    protocol_of("digits").id
    protocol_of_config(cfg)          # the protocol of an experiment config

A **budget** is the number of training images a run processed (epochs × training images,
summed over its stages) plus the budget of every run it starts from (`method_args` values
`experiment:<suite>/<name>`, or a run folder): a fine-tune includes its backbone's training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.errors import ConfigError
from benchmarks.io import canonical_json, sha256_bytes

__all__ = ["Protocol", "protocol_of", "protocol_of_config", "training_budget", "check_same_protocol"]


@dataclass(frozen=True)
class Protocol:
    dataset: str
    task: str
    metric: str
    input_shape: tuple[int, int, int]
    options: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    preprocessing: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "task": self.task, "metric": self.metric,
            "input_shape": list(self.input_shape), "options": self.options,
            "splits": self.splits, "preprocessing": self.preprocessing,
        }  # fmt: skip

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json(self.fields()).encode())

    @property
    def id(self) -> str:
        binary = "-bin" if self.task.startswith("binary") else ""
        return f"{self.dataset}-{self.input_shape[-1]}px{binary}-{self.digest[:4]}"

    def describe(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items())) or "no options"
        c, h, w = self.input_shape
        return f"{self.id}: {self.dataset}, {self.task}, {c}x{h}x{w} inputs, {options}"


def _split_hashes(dataset: str) -> dict[str, str]:
    """sha256 of each split's index list, from the checked-in manifest (or, for a dataset that
    is prepared from the user's files, the hashes its recipe pins, else the recipe's own)."""
    from benchmarks.data.manifest import load_manifest, manifest_path

    manifest = load_manifest(manifest_path(dataset))
    hashes = {name: entry.sha256 for name, entry in manifest.splits.items()}
    pinned = (manifest.extra or {}).get("split_sha256") or {}
    hashes.update({k: v for k, v in pinned.items() if v and k not in hashes})
    if not hashes:
        recipe = canonical_json({"procedure": manifest.procedure, "seed": manifest.seed, "extra": manifest.extra})
        hashes = {"recipe": sha256_bytes(recipe.encode())}
    return dict(sorted(hashes.items()))


def protocol_of(dataset: str, options: dict[str, Any] | None = None) -> Protocol:
    """The protocol of `dataset` under config `dataset.options` (validated)."""
    from benchmarks.data import dataset_info, get_source

    options = dict(options or {})
    info = dataset_info(dataset, options) if options else get_source(dataset).info
    positives = options.get("positive_classes") or []
    task = f"binary{sorted(positives)}" if positives else f"{info.num_classes}-way"
    preprocessing = f"normalize(mean={list(info.mean)}, std={list(info.std)})" if info.mean else "none"
    return Protocol(
        dataset=dataset, task=task, metric=info.metric, input_shape=tuple(info.input_shape),
        options=dict(sorted(options.items())), splits=_split_hashes(dataset), preprocessing=preprocessing,
    )  # fmt: skip


def protocol_of_config(cfg: dict[str, Any]) -> Protocol:
    return protocol_of(cfg["dataset"]["name"], cfg["dataset"].get("options") or None)


def check_same_protocol(protocols: dict[str, str], what: str = "comparison") -> str:
    """The one protocol id of `protocols` ({row label: protocol id}); a mix is refused with a
    message naming two of them (PROTOCOL.md §1)."""
    ids = sorted(set(protocols.values()))
    if len(ids) > 1:
        first = next(label for label, p in protocols.items() if p == ids[0])
        second = next(label for label, p in protocols.items() if p == ids[1])
        raise ConfigError(
            f"a {what} across protocols is refused: {first} is measured under {ids[0]}, "
            f"{second} under {ids[1]} (PROTOCOL.md §1)"
        )
    if not ids:
        raise ConfigError(f"a {what} needs at least one row")
    return ids[0]


# --------------------------------------------------------------------------------------------
# Budgets


def _train_images(cfg: dict[str, Any]) -> int:
    from benchmarks.data import get_source

    count = get_source(cfg["dataset"]["name"]).split_counts().get("train")
    if not count:
        extra = get_source(cfg["dataset"]["name"]).manifest().extra or {}
        count = (extra.get("split_counts") or {}).get("train")
    if not count:
        raise ConfigError(f"{cfg.get('source', 'config')}: the training split's size of '{cfg['dataset']['name']}' is unknown")
    subset = (cfg["dataset"].get("options") or {}).get("train_subset")
    return min(int(subset), int(count)) if subset else int(count)


def _stage_epochs(cfg: dict[str, Any]) -> list[int]:
    stages = cfg.get("stages") or [{"epochs": cfg["train"]["epochs"]}]
    return [int(stage.get("epochs", cfg["train"]["epochs"])) for stage in stages]


def _parent_budget(value: str, cfg: dict[str, Any], seen: tuple[str, ...]) -> int:
    from benchmarks.config import find_config, load_config

    where = cfg.get("source", "config")
    if value.startswith("experiment:"):
        name = value[len("experiment:"):]
        if name in seen:
            raise ConfigError(f"{where}: experiments start from each other in a cycle: {' -> '.join((*seen, name))}")
        parent = load_config(find_config(name), quick=bool(cfg.get("quick")))
        return training_budget(parent, seen=(*seen, name))
    folder = Path(value).expanduser()
    if (folder / "config.yaml").is_file():
        from benchmarks.runs import RunFolder

        return training_budget(RunFolder(folder).load_config(), seen=seen)
    raise ConfigError(
        f"{where}: cannot compute the training budget: '{value}' is a checkpoint without the run "
        "folder whose config says how it was trained (name experiment:<suite>/<name> or a run folder)"
    )


#: method_args keys that name the run a run starts from
PARENT_KEYS = ("init", "backbone")


def parent_references(cfg: dict[str, Any]) -> list[str]:
    """What the run of `cfg` starts from: the values of its `method_args` PARENT_KEYS
    (`experiment:<suite>/<name>`, a run folder or a checkpoint)."""
    args = cfg.get("method_args") or {}
    return [args[key] for key in PARENT_KEYS if isinstance(args.get(key), str) and args[key]]


def training_budget(cfg: dict[str, Any], seen: tuple[str, ...] = ()) -> int:
    """Training images processed by the run of `cfg`, its parents' included (see module doc)."""
    own = _train_images(cfg) * sum(_stage_epochs(cfg))
    return own + sum(_parent_budget(value, cfg, seen) for value in parent_references(cfg))


def budget_or_none(cfg: dict[str, Any]) -> int | None:
    """`training_budget`, or None where a parent checkpoint has no run config."""
    try:
        return training_budget(cfg)
    except ConfigError:
        return None
