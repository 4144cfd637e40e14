"""Typed, strict configs: YAML + flags + `key.sub=value` overrides -> a validated, frozen model.

Every config in the project is a `StrictModel` (pydantic, unknown keys forbidden). `load_config`
turns every failure (unknown key, wrong type, impossible value, missing path) into ONE
`ConfigError` naming the source file and the dotted key, before any compute starts.
`canonical_json` is the serialisation that gets hashed and logged (sorted keys, no whitespace).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "StrictModel",
    "load_config",
    "apply_overrides",
    "canonical_json",
    "config_digest",
    "named_yaml",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key."""


class StrictModel(BaseModel):
    """Unknown keys are errors. A model validator names the offending field by starting its
    message with `field_name: `, so the error reports the full dotted key."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


M = TypeVar("M", bound=BaseModel)
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.*)$", re.S)


def _child(node, key: str):
    """A section by key; inside a list, by index or by the `name` of a list item (`nodes.sft.config`)."""
    if isinstance(node, list):
        if key.isdigit() and int(key) < len(node):
            return node, int(key)
        named = [i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == key]
        return (node, named[0]) if named else (None, None)
    return node, key


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        node, key = _child(node, key)
        if node is None:
            raise ConfigError(f"{source}: key '{'.'.join(keys[: i + 1])}': no such list item")
        if isinstance(node, dict):
            node.setdefault(key, {})
        child = node[key]
        if not isinstance(child, dict | list):
            raise ConfigError(f"{source}: key '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node, key = _child(node, keys[-1])
    if node is None:
        raise ConfigError(f"{source}: key '{dotted}': no such list item")
    node[key] = value


def apply_overrides(tree: dict, overrides: Iterable[str], source: str = "command line") -> dict:
    """Apply `a.b=value` overrides; the value is parsed as YAML (`512` -> int, `[1,2]` -> list)."""
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted or any(not part for part in dotted.split(".")):
            raise ConfigError(f"{source}: override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override '{item}': value is not valid YAML ({exc})") from None
        _set_dotted(tree, dotted, value, source)
    return tree


def _deep_merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        # Model-level validators name their field by prefixing "field: " (see StrictModel).
        field = _FIELD_PREFIX.match(msg) if err["type"] == "value_error" else None
        if field:
            key = field[1] if key == "<root>" else f"{key}.{field[1]}"
            msg = field[2]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"key '{key}': {msg}")
    head = f"invalid config ({source})"
    return head + ": " + lines[0] if len(lines) == 1 else head + ":\n  " + "\n  ".join(lines)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> M:
    """YAML file < explicit `values` (e.g. CLI flags) < `key=value` overrides, validated strictly."""
    tree: dict = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid config ({source}): not valid YAML: {_one_line(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"invalid config ({source}): top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    if values:
        tree = _deep_merge(tree, {k: v for k, v in values.items() if v is not None})
    overrides = list(overrides)
    tree = apply_overrides(tree, overrides, source=source)
    if overrides:
        source = f"{source} + overrides"
    _refuse_credentials(tree, source)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _one_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


_CREDENTIALS_IN_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+:[^/@\s]*@")


def _refuse_credentials(tree, source: str, key: str = "") -> None:
    """A URI with user:secret@ in a config would be stored in the run store, logged and printed:
    credentials come from the environment only."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            _refuse_credentials(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _refuse_credentials(v, source, f"{key}.{i}")
    elif isinstance(tree, str) and _CREDENTIALS_IN_URI.match(tree):
        raise ConfigError(f"invalid config ({source}): key '{key}': credentials in a URI are not accepted (they "
                          "would be stored and logged); give them in the environment: AWS_ACCESS_KEY_ID / "
                          "AWS_SECRET_ACCESS_KEY (or an instance profile) for S3, MLFLOW_TRACKING_USERNAME / "
                          "MLFLOW_TRACKING_PASSWORD for MLflow")


def named_yaml(directory: Path, name: str, what: str) -> Path:
    """`directory/NAME.yaml` of a family of named configs (recipes, presets); the error lists them."""
    path = directory / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
        raise ConfigError(f"unknown {what} {name!r} (known: {known})")
    return path


def canonical_json(cfg: BaseModel) -> str:
    """The resolved config as the one string that is hashed and logged."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_digest(cfg: BaseModel) -> str:
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()
