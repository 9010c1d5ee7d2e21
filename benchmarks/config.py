"""Experiment configs: YAML files validated against a schema, resolved, and hashed.

An experiment file (`benchmarks/configs/<suite>/<name>.yaml`) names the model, the dataset,
the training method and its stages, seeds, selection, and a `quick` override merged in for
CI-sized runs. `load_config` validates every key (a bad one is a `ConfigError` naming the file,
the key and what was expected), applies `quick` and `--set key=value` overrides, and returns
the resolved config. `config_hash` of the resolved config names its run folder, so the same
experiment always lands in (and reuses) the same folder.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import ConfigError
from benchmarks.io import canonical_json, sha256_bytes

CONFIG_ROOT = Path(__file__).with_name("configs")

# Schema: key -> (checker, default). A dict value is a nested section. Keys not listed are
# errors, except under the free-form sections named in FREE_FORM.
_REQUIRED = object()
FREE_FORM = {"model.kwargs", "method_args", "dataset.options", "train.optimizer", "train.scheduler"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _nonneg_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _run_name(v: Any) -> bool:
    """An experiment name becomes a folder name: letters, digits, '.', '_', '-' only."""
    return isinstance(v, str) and _SAFE_NAME.fullmatch(v) is not None


def _string(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _choice(*options: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return v in options

    check.expected = f"one of {', '.join(options)}"  # type: ignore[attr-defined]
    return check


def _list_of_ints(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _list_of_dicts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


_EXPECTED = {
    _positive_int: "a positive integer",
    _nonneg_number: "a non-negative number",
    _string: "a non-empty string",
    _run_name: "a name of letters, digits, '.', '_' and '-' (it names the run folder; no '/' or '..')",
    _list_of_ints: "a non-empty list of non-negative integers",
    _dict: "a mapping",
    _list_of_dicts: "a list of mappings",
}

SCHEMA: dict[str, Any] = {
    "name": (_run_name, _REQUIRED),
    "suite": (_string, "custom"),
    "description": (lambda v: isinstance(v, str), ""),
    "model": {
        "name": (_string, _REQUIRED),
        "kwargs": (_dict, {}),
    },
    "dataset": {
        "name": (_string, _REQUIRED),
        "options": (_dict, {}),
    },
    "method": (_string, "supervised"),
    "method_args": (_dict, {}),
    "seeds": (_list_of_ints, [0]),
    "deterministic": (lambda v: isinstance(v, bool), True),
    "train": {
        "epochs": (_positive_int, _REQUIRED),
        "batch_size": (_positive_int, 128),
        "eval_batch_size": (_positive_int, 512),
        "optimizer": (_dict, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
        "scheduler": (_dict, {"name": "cosine"}),
        "augment": (_choice("none", "crop_flip", "flip"), "none"),
        "label_smoothing": (_nonneg_number, 0.0),
        "grad_clip": (_nonneg_number, 0.0),
        "amp": (lambda v: isinstance(v, bool), True),
        "channels_last": (lambda v: isinstance(v, bool), True),
        "num_workers": (lambda v: _is_int(v) and v >= 0, 0),
        "data_on_device": (lambda v: isinstance(v, bool), False),
    },
    "stages": (_list_of_dicts, []),
    "select": {
        "metric": (_string, "val_accuracy"),
        "mode": (_choice("max", "min"), "max"),
    },
    "quick": (_dict, {}),
    "sweep": (_dict, {}),
}


def _expected(check: Callable[[Any], bool]) -> str:
    return getattr(check, "expected", None) or _EXPECTED.get(check, "a valid value")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (mappings merge, other values replace)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _validate(data: Any, schema: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, schema, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{where}: unknown key '{prefix}{key}'{hint}; allowed here: {', '.join(sorted(schema))}"
        )
    resolved: dict[str, Any] = {}
    for key, rule in schema.items():
        path = f"{prefix}{key}"
        if isinstance(rule, dict):
            resolved[key] = _validate(data.get(key, {}), rule, where, path + ".")
            continue
        check, default = rule
        if key not in data or data[key] is None:
            if default is _REQUIRED:
                raise ConfigError(f"{where}: missing required key '{path}' ({_expected(check)})")
            resolved[key] = copy.deepcopy(default)
            continue
        if not check(data[key]):
            raise ConfigError(
                f"{where}: key '{path}' must be {_expected(check)}, got {data[key]!r}"
            )
        resolved[key] = copy.deepcopy(data[key])
    return resolved


class _YamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-3` as a number (YAML 1.1 needs `1.0e-3`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """Safe YAML (no Python objects), with scientific notation read as numbers."""
    loader = _YamlLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    try:
        value = load_yaml_text(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{item}': value is not valid YAML ({exc})") from exc
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{item}': empty key")
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}")
    _check_size(data, str(path))
    return data


MAX_CONFIG_VALUES = 100_000


def _check_size(data: Any, where: str) -> None:
    """Refuse a config whose values, with YAML aliases expanded, exceed MAX_CONFIG_VALUES
    (an alias bomb is a few lines that expand exponentially). Stops counting at the limit."""
    count = 0
    stack = [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{where}: the config expands to more than {MAX_CONFIG_VALUES:,} values "
                "(YAML anchors and aliases expanded); refusing it"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def resolve_config(
    data: dict[str, Any],
    where: str = "config",
    quick: bool = False,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Validate, apply the `quick` override (when asked) and `--set` overrides."""
    data = apply_overrides(data, overrides)
    quick_part = data.get("quick") or {}
    if not isinstance(quick_part, dict):
        raise ConfigError(f"{where}: key 'quick' must be a mapping")
    if quick:
        data = deep_merge(data, quick_part)
    resolved = _validate(data, SCHEMA, where)
    resolved.pop("quick")
    resolved["quick"] = bool(quick)
    for i, stage in enumerate(resolved["stages"]):
        if not _string(stage.get("name")):
            raise ConfigError(f"{where}: stages[{i}] needs a 'name' (a non-empty string)")
    _validate_known_names(resolved, where)
    _validate_training(resolved, where)
    if "sweep" in data and not resolved["sweep"]:
        raise ConfigError(f"{where}: key 'sweep' is empty; give it at least one key and its list of values")
    if resolved["sweep"]:
        from benchmarks.sweeps import grid

        grid({**resolved, "source": where})  # unknown keys, empty value lists
    else:
        del resolved["sweep"]  # a config without a sweep hashes as it always did
    return resolved


def _validate_training(cfg: dict[str, Any], where: str) -> None:
    """Optimizers and schedules, the config's and every stage's, checked before anything runs."""
    from benchmarks.engine.optim import check_optimizer, check_scheduler

    check_optimizer(cfg["train"]["optimizer"], f"{where}: train.optimizer")
    check_scheduler(cfg["train"]["scheduler"], f"{where}: train.scheduler")
    for i, stage in enumerate(cfg["stages"]):
        for key, check in (("optimizer", check_optimizer), ("scheduler", check_scheduler)):
            if key in stage:
                if not isinstance(stage[key], dict):
                    raise ConfigError(f"{where}: stages[{i}].{key} must be a mapping")
                check(stage[key], f"{where}: stages[{i}] ({stage.get('name')}).{key}")


def _validate_known_names(cfg: dict[str, Any], where: str) -> None:
    from benchmarks.data import get_source
    from benchmarks.errors import UnknownNameError
    from benchmarks.registry import get_model_spec

    for kind, lookup, value in (
        ("dataset", get_source, cfg["dataset"]["name"]),
        ("model", get_model_spec, cfg["model"]["name"]),
    ):
        try:
            lookup(value)
        except UnknownNameError as exc:
            raise ConfigError(f"{where}: key '{kind}.name': {exc}") from None
    from benchmarks.data import DatasetOptions

    DatasetOptions.parse(cfg["dataset"]["options"], get_source(cfg["dataset"]["name"]).info, where)


def load_config(
    path: str | os.PathLike, quick: bool = False, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Read, validate and resolve an experiment YAML file."""
    path = Path(path)
    cfg = resolve_config(read_yaml(path), where=str(path), quick=quick, overrides=overrides)
    cfg["source"] = str(path)
    return cfg


# Keys that say where a config came from, not what it computes: excluded from the hash.
_NOT_HASHED = {"source", "description", "suite", "sweep_of"}


def config_hash(cfg: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the resolved config (provenance keys excluded)."""
    semantic = {k: v for k, v in cfg.items() if k not in _NOT_HASHED}
    return sha256_bytes(canonical_json(semantic).encode())


def run_name(cfg: dict[str, Any], seed: int | None = None) -> str:
    seed_part = f"-s{seed}" if seed is not None else ""
    return f"{cfg['name']}{seed_part}-{config_hash(cfg)[:12]}"


def find_config(name_or_path: str) -> Path:
    """A config path as given, or a bundled config by '<suite>/<name>'."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_absolute() or name_or_path.startswith(".") or (name_or_path.endswith((".yaml", ".yml")) and not (CONFIG_ROOT / name_or_path).is_file()):
        raise ConfigError(f"config file '{name_or_path}' does not exist")
    bundled = CONFIG_ROOT / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if bundled.is_file():
        return bundled
    known = sorted(str(p.relative_to(CONFIG_ROOT))[:-5] for p in CONFIG_ROOT.rglob("*.yaml"))
    from benchmarks.errors import UnknownNameError

    raise UnknownNameError("config", name_or_path, known)
