"""Chapter parameters: one schema per chapter, checked before any training starts.

Each chapter ``notebooks/NN_name.ipynb`` has ``notebooks/profiles/NN_name.yaml``::

    parameters:                 # every name in the chapter's `parameters` cell, with its type and
    range
      epochs: {type: int, min: 1} rhos: {type: list, item: float, min: 0.0, max: 1.0, min_len: 1}
      device: {type: str, choices: [auto, cpu, cuda, mps]} seed: {type: int, min: 0, sweep: true}
      # sweep: an axis of the chapter's grid (see cache_config)
    profiles:                   # papermill parameter sets; values not given keep the notebook's
    defaults
      smoke: {epochs: 1}
      quick: {}
      full: {epochs: 80}

The runner validates a profile against the schema before executing anything, and the chapter
validates its actual values again in its first code cell (so a papermill run with hand-written
``-p`` values is checked too). Every error names the parameter. ``min_exclusive: true`` makes
``min`` exclusive (a learning rate of 0 trains nothing); ``nullable: true`` admits null (for sizes:
all images; every data builder needs at least one image per class, hence ``min: 10``); ``sweep:
true`` marks a list the chapter iterates over (left out of cache keys, which carry each cell's own
value).

Bounds are required, so that no value can make a chapter loop or overflow before it fails: every
``int`` rule (and every list of ints) has a ``max`` or ``choices``, every ``list`` and ``dict`` a
``max_len``; a ``float`` is always finite (NaN and ±inf are refused, whatever its range). Schema
files are plain YAML without anchors or aliases (an alias "bomb" cannot expand), and a schema that
lacks a bound is itself an error naming the file and the parameter.
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from helpers.cache import REPO_ROOT

PROFILE_DIR = REPO_ROOT / "notebooks" / "profiles"
PROFILES = ("smoke", "quick", "full")
TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}
RULE_KEYS = {
    "type",
    "item",
    "min",
    "max",
    "min_exclusive",
    "choices",
    "min_len",
    "max_len",
    "nullable",
    "sweep",
    "help",
}


# rules that must bound a type: one of these keys is required
BOUNDS = {"int": ("max", "choices"), "list": ("max_len",), "dict": ("max_len",)}


class ParameterError(ValueError):
    """An invalid chapter parameter; the message names it."""

    def __init__(self, chapter: str, name: str, message: str):
        self.chapter, self.name = chapter, name
        super().__init__(f"{chapter}: parameter '{name}' {message}")


def swept(chapter: str, profile_dir: Path | None = None) -> set[str]:
    """Names marked ``sweep: true``: axes of the chapter's grid, which each cached cell keys by its
    own value."""
    return {
        name
        for name, rule in load_spec(chapter, profile_dir)["parameters"].items()
        if rule.get("sweep")
    }


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a few lines of nested aliases expand into
    billions of nodes (the "billion laughs"), and no parameter file needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed here", event.start_mark
            )
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.constructor.ConstructorError(
                None, None, "YAML anchors (&name) are not allowed here", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_without_aliases(text: str, path: str | Path = "<string>"):
    """Parse ``text`` as YAML, refusing anchors and aliases; errors name ``path``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_spec(chapter: str, profile_dir: Path | None = None) -> dict:
    path = Path(profile_dir or PROFILE_DIR) / f"{chapter}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no parameter schema for chapter '{chapter}' at {path}")
    spec = load_yaml_without_aliases(path.read_text(), path) or {}
    params = dict(spec.get("parameters") or {})
    for name, rule in params.items():
        unknown = set(rule) - RULE_KEYS
        if unknown or rule.get("type") not in TYPES:
            raise ValueError(
                f"{path}: bad rule for '{name}' (type must be one of {sorted(TYPES)}, keys among "
                f"{sorted(RULE_KEYS)})"
            )
        kinds = [rule["type"]] + ([rule["item"]] if rule["type"] == "list" else [])
        for kind in kinds:
            if kind in BOUNDS and not any(key in rule for key in BOUNDS[kind]):
                raise ValueError(
                    f"{path}: the rule for '{name}' needs {' or '.join(BOUNDS[kind])} (every "
                    f"{kind} parameter is bounded)"
                )
    return {"parameters": params, "profiles": spec.get("profiles") or {}}


def _finite(chapter: str, label: str, value: Any) -> None:
    """Refuse NaN and ±inf anywhere in ``value`` (a float, or floats inside lists and dicts)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(chapter, label, f"must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _finite(chapter, f"{label}[{key!r}]", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(chapter, f"{label}[{i}]", item)


def _check_scalar(
    chapter: str, name: str, value: Any, type_name: str, rule: Mapping, where: str = ""
) -> Any:
    want = TYPES[type_name]
    label = f"{name}{where}"
    # bool is an int subclass: refuse True for an int parameter; accept an int where a float is
    # expected.
    if type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (type_name in ("int", "float") and isinstance(value, bool)):
        raise ParameterError(
            chapter, label, f"must be of type {type_name}, got {type(value).__name__} {value!r}"
        )
    _finite(chapter, label, value)  # NaN passes every comparison below
    if "choices" in rule and value not in rule["choices"]:
        raise ParameterError(chapter, label, f"must be one of {rule['choices']}, got {value!r}")
    if "min" in rule and rule.get("min_exclusive") and value <= rule["min"]:
        raise ParameterError(chapter, label, f"must be > {rule['min']}, got {value!r}")
    if "min" in rule and value < rule["min"]:
        raise ParameterError(chapter, label, f"must be >= {rule['min']}, got {value!r}")
    if "max" in rule and value > rule["max"]:
        raise ParameterError(chapter, label, f"must be <= {rule['max']}, got {value!r}")
    return value


def check_value(chapter: str, name: str, value: Any, rule: Mapping) -> Any:
    """Validate one value against its rule; returns it (ints widened to float where a float is
    expected)."""
    if value is None and rule.get("nullable"):
        return None
    if rule["type"] == "list":
        if not isinstance(value, (list, tuple)):
            raise ParameterError(
                chapter, name, f"must be a list, got {type(value).__name__} {value!r}"
            )
        if len(value) < rule.get("min_len", 0):
            raise ParameterError(
                chapter, name, f"needs at least {rule['min_len']} entries, got {len(value)}"
            )
        if "max_len" in rule and len(value) > rule["max_len"]:
            raise ParameterError(
                chapter, name, f"takes at most {rule['max_len']} entries, got {len(value)}"
            )
        item = rule.get("item")
        if item is None:
            _finite(chapter, name, value)
            return list(value)
        return [_check_scalar(chapter, name, v, item, rule, f"[{i}]") for i, v in enumerate(value)]
    if (
        rule["type"] == "dict"
        and isinstance(value, Mapping)
        and len(value) > rule.get("max_len", len(value))
    ):
        raise ParameterError(
            chapter, name, f"takes at most {rule['max_len']} entries, got {len(value)}"
        )
    return _check_scalar(chapter, name, value, rule["type"], rule)


def validate(
    chapter: str,
    values: Mapping[str, Any],
    *,
    partial: bool = False,
    profile_dir: Path | None = None,
) -> dict:
    """Check ``values`` against the chapter's schema: unknown names, missing names (unless
    ``partial``), types and ranges. Returns the validated values."""
    rules = load_spec(chapter, profile_dir)["parameters"]
    unknown = sorted(set(values) - set(rules) - {"profile"})
    if unknown:
        raise unknown_parameter(chapter, unknown[0], rules)
    if "profile" in values and values["profile"] not in PROFILES:
        raise ParameterError(
            chapter, "profile", f"must be one of {list(PROFILES)}, got {values['profile']!r}"
        )
    if not partial:
        missing = sorted(set(rules) - set(values))
        if missing:
            raise ParameterError(chapter, missing[0], "is missing from the parameters cell")
    return {
        name: check_value(chapter, name, v, rules[name]) if name in rules else v
        for name, v in values.items()
    }


def unknown_parameter(chapter: str, name: str, rules: Mapping) -> ParameterError:
    """The error for a name the schema does not know, suggesting the closest known one (a typo,
    usually)."""
    known = sorted(set(rules) | {"profile"})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ParameterError(
        chapter, name, f"is not a parameter of this chapter ({hint}known: {known})"
    )


def injected_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names assigned by papermill's injected-parameters cell, read from IPython's input history.

    papermill writes that cell as ``# Parameters`` followed by one ``name = value`` line per
    ``-p``/``-y`` value. A misspelt name only creates a new global, which the schema check on the
    known names cannot see, so the injected cell's own source is the reliable record of what was
    passed. Outside IPython (no ``In``) it is [].
    """
    history = namespace.get("In") or namespace.get("_ih") or []
    names: list[str] = []
    for source in history:
        if not isinstance(source, str) or not source.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names += [
                    t.id for t in node.targets if isinstance(t, ast.Name) and t.id not in names
                ]
    return names


def profile_values(chapter: str, profile: str, profile_dir: Path | None = None) -> dict:
    """The validated papermill parameters of ``profile`` (plus ``profile`` itself)."""
    if profile not in PROFILES:
        raise ParameterError(
            chapter, "profile", f"must be one of {list(PROFILES)}, got {profile!r}"
        )
    spec = load_spec(chapter, profile_dir)
    values = dict(spec["profiles"].get(profile) or {})
    return {**validate(chapter, values, partial=True, profile_dir=profile_dir), "profile": profile}


def parameters_from_namespace(chapter: str, namespace: Mapping[str, Any]) -> dict:
    """Collect and validate the chapter's parameters from a notebook's globals()."""
    rules = load_spec(chapter)["parameters"]
    for name in injected_names(namespace):
        if name not in rules and name != "profile":
            raise unknown_parameter(chapter, name, rules)
    values = {name: namespace[name] for name in rules if name in namespace}
    if "profile" in namespace:
        values["profile"] = namespace["profile"]
    return validate(chapter, values)
