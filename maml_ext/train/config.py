"""Run configuration: a TOML file (or a packaged one, by name) plus ``--set key=value`` overrides.

``[model]``, ``[task]`` and ``[algorithm]`` hold a ``name`` and that plugin's or algorithm's own
options, which are checked by whoever receives them; ``seed``, ``[train]`` and ``[eval]`` are
checked here, each bad value rejected with its key and the expected range.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

Config = dict[str, Any]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _int(lo: int, hi: int | None = None) -> tuple[Callable[[Any], bool], str]:
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)  # noqa: E731
    return ok, f"an integer {rng}"


def _positive_float() -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0  # noqa: E731
    return ok, "a number > 0"


def _int_list(lo: int) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: isinstance(v, list) and bool(v) and all(_int(lo)[0](x) for x in v)  # noqa: E731
    return ok, f"a non-empty list of integers >= {lo}"


# key -> (check, expected, default); a default of None means "optional, no value".
SCHEMA: dict[str, tuple[tuple[Callable[[Any], bool], str], Any]] = {
    "seed": (_int(0), 0),
    "train.iterations": (_int(1), 1000),
    "train.meta_batch": (_int(1), 25),
    "train.k_support": (_int(1), 10),
    "train.k_query": (_int(1), 10),
    "train.meta_lr": (_positive_float(), 1e-3),
    "train.checkpoint_every": (_int(1), 1000),
    "train.log_every": (_int(1), 100),
    "train.threads": (_int(0), 0),
    "train.clip_grad": (_positive_float(), None),
    "train.task_chunk": (_int(1), None),
    "eval.num_tasks": (_int(1), 600),
    "eval.shots": (_int_list(1), [5, 10]),
    "eval.k_query": (_int(1), 100),
    "eval.steps": (_int(0, 1000), 10),
    "eval.seed": (_int(0), 1000),
    "eval.chunk": (_int(1), 200),
    "eval.lr": (_positive_float(), None),
}
PLUGIN_SECTIONS = ("model", "task", "algorithm")


def builtin_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("maml_ext.configs").iterdir() if p.name.endswith(".toml"))


def read(source: str | Path) -> Config:
    """Parse a TOML file, or a packaged config given by name (e.g. ``sinusoid``)."""
    path = Path(source)
    try:
        if path.suffix == ".toml" or path.exists():
            return tomllib.loads(path.read_text())
        if str(source) in builtin_configs():
            return tomllib.loads(resources.files("maml_ext.configs").joinpath(f"{source}.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}") from exc
    raise ConfigError(f"no config file {source!r}; packaged configs: {', '.join(builtin_configs())}")


def _parse_value(text: str) -> Any:
    # TOML literals (numbers, booleans, arrays, quoted strings); anything else is a bare string.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings (value in TOML syntax, bare strings allowed)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = _parse_value(text.strip())
    return out


def flatten(cfg: Config, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"iterations": 5}}`` -> ``{"train.iterations": 5}``."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def validate(cfg: Config) -> Config:
    """Fill defaults and check every value; returns a new, complete config."""
    out: Config = {s: dict(cfg.get(s, {})) for s in PLUGIN_SECTIONS}
    for section in PLUGIN_SECTIONS:
        if not isinstance(cfg.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table")
        if not isinstance(out[section].get("name"), str):
            raise ConfigError(f"{section}.name is required (a string)")
    given = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] not in PLUGIN_SECTIONS}
    unknown = sorted(set(given) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(SCHEMA)}")
    for key, ((check, expected), default) in SCHEMA.items():
        value = given.get(key, default)
        if value is None:
            continue
        if not check(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
        node = out
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = float(value) if expected.startswith("a number") else value
    return out


def load(source: str | Path, overrides: Iterable[str] = ()) -> Config:
    return validate(apply_overrides(read(source), overrides))
