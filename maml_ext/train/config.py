"""Run configuration: a TOML file (or a packaged one, by name) plus ``--set key=value`` overrides.

``[model]``, ``[task]`` and ``[algorithm]`` hold a ``name`` and that plugin's or algorithm's own
options, which are checked by whoever receives them; ``seed``, ``[train]`` and ``[eval]`` are
checked here, each bad value rejected with its key and the expected range.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import math
import tomllib
import types
import typing
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


def _float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _bool() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _choice(*options: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), f"one of {list(options)}"


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
    "train.optimizer": (_choice("adam", "fresh-adam"), "adam"),
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

# Meta-RL runs (the task family is a maml_ext.rl TaskEnv): MAML paper §5.3 / maml_rl defaults.
RL_SCHEMA: dict[str, tuple[tuple[Callable[[Any], bool], str], Any]] = {
    "seed": (_int(0), 0),
    "train.iterations": (_int(1), 100),
    "train.meta_batch": (_int(1), 20),
    "train.rollouts": (_int(1), 20),
    "train.optimizer": (_choice("trpo", "adam"), "trpo"),
    "train.meta_lr": (_positive_float(), 1e-3),
    "train.max_kl": (_positive_float(), 0.01),
    "train.cg_iters": (_int(1), 10),
    "train.cg_damping": (_float_in(0.0, 1e6), 1e-5),
    "train.backtrack_ratio": (_float_in(0.0, 1.0, lo_open=True, hi_open=True), 0.8),  # 1 would never shrink
    "train.max_backtracks": (_int(1), 15),
    "train.cg_subsample": (_float_in(0.0, 1.0, lo_open=True), 1.0),  # rllab's subsample_factor
    "train.gamma": (_float_in(0.0, 1.0, lo_open=True), 0.99),
    "train.gae_lambda": (_float_in(0.0, 1.0), 1.0),
    "train.center_advantages": (_bool(), True),
    "train.checkpoint_every": (_int(1), 10),
    "train.log_every": (_int(1), 1),
    "train.threads": (_int(0), 1),
    "eval.num_tasks": (_int(1), 40),
    "eval.rollouts": (_int(1), 40),
    "eval.steps": (_int(0, 100), 3),
    "eval.lr": (_positive_float(), 0.1),
    "eval.later_lr": (_positive_float(), 0.05),
    "eval.seed": (_int(0), 1),
    "eval.random_init": (_bool(), True),
    "eval.trajectories": (_int(0), 4),
}


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {source}: not a UTF-8 TOML text file ({exc.reason} at byte {exc.start})") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}") from exc
    raise ConfigError(f"no config file {source!r}; packaged configs: {', '.join(builtin_configs())}")


def _parse_value(item: str, text: str) -> Any:
    # TOML literals (numbers, booleans, arrays, tables, quoted strings); any other text is a bare
    # string (``relu``, ``/data/omniglot``). Text that starts like an array, table or quoted string
    # must parse: ``[40,40`` is a typo, not the string "[40,40".
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if text[:1] in ("[", "{", '"', "'"):
            raise ConfigError(f"override {item!r}: the value is not valid TOML ({exc})") from exc
        return text


def _split_key(item: str, key: str) -> list[str]:
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return [p.strip() for p in parts]


def apply_overrides(cfg: Config, overrides: Iterable[str], unset: Iterable[str] = ()) -> Config:
    """Drop the ``unset`` keys (``section.key``), then apply ``section.key=value`` strings (value
    in TOML syntax, bare strings allowed)."""
    out = copy.deepcopy(cfg)
    for key in unset:
        *sections, leaf = _split_key(f"--unset {key}", key)
        node = out
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"--unset {key}: the config has no key {key!r}")
        del node[leaf]
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *sections, leaf = _split_key(item, key)
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = _parse_value(item, text.strip())
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


def _check_finite(key: str, value: Any) -> None:
    # TOML reads inf and nan; no setting, the plugins' included, means either.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, (list, dict)):
        for i, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            _check_finite(f"{key}[{i!r}]", item)


def _did_you_mean(unknown: list[str], guess: Callable[[str], str | None]) -> str:
    """`` (did you mean 'x'?)`` for the unknown names that resemble a known one, else ''."""
    guesses = [repr(g) if len(unknown) == 1 else f"{g!r} for {k!r}" for k in unknown if (g := guess(k))]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def _close_key(key: str, schema: dict[str, Any]) -> str | None:
    """The key a misspelt ``key`` most likely meant: a known key of its section, or the same key
    under the nearest section name (``algoritm.name`` -> ``algorithm.name``)."""
    section, _, rest = key.partition(".")
    sections = sorted({*PLUGIN_SECTIONS, *(k.split(".")[0] for k in schema if "." in k)})
    if section in sections or not rest:
        found = difflib.get_close_matches(key, list(schema), n=1)
        return found[0] if found else None
    near = difflib.get_close_matches(section, sections, n=1)
    return f"{near[0]}.{rest}" if near else None


def validate(cfg: Config, schema: dict[str, tuple[tuple[Callable[[Any], bool], str], Any]] | None = None) -> Config:
    """Fill defaults and check every value (against ``schema``, default: the supervised
    ``SCHEMA``; meta-RL runs pass ``RL_SCHEMA``); returns a new, complete config."""
    schema = SCHEMA if schema is None else schema
    for section in PLUGIN_SECTIONS:
        if not isinstance(cfg.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table, got {cfg[section]!r}")
    out: Config = {s: dict(cfg.get(s, {})) for s in PLUGIN_SECTIONS}
    for section in PLUGIN_SECTIONS:
        if not isinstance(out[section].get("name"), str):
            raise ConfigError(f"{section}.name is required (a string)")
    flat = flatten(cfg)
    for key, value in flat.items():
        _check_finite(key, value)
    given = {k: v for k, v in flat.items() if k.split(".")[0] not in PLUGIN_SECTIONS}
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}{_did_you_mean(unknown, lambda k: _close_key(k, schema))}"
                          f"; known: {sorted(schema)}, and [{'], ['.join(PLUGIN_SECTIONS)}] with a name and "
                          f"that plugin's or algorithm's options")
    for key, ((check, expected), default) in schema.items():
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
    if schema is RL_SCHEMA and out["eval"]["trajectories"] > out["eval"]["num_tasks"]:
        raise ConfigError(f"eval.trajectories must be <= eval.num_tasks ({out['eval']['num_tasks']}), "
                          f"got {out['eval']['trajectories']}")
    return out


def _describe(hint: Any) -> str | None:
    """What a TOML value must be to match the annotation ``hint``; None when the config cannot
    say (callables, arbitrary classes: the receiver checks those)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return None if None in parts else " or ".join(parts)
    if origin in (list, tuple, collections.abc.Sequence):
        if not args:
            return "a list"
        item = _describe(args[0])
        return None if item is None else f"a list, each {item}"
    return None


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (only called for hints ``_describe`` can describe)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args if a is not type(None))
    # A sequence: a TOML array (a string is a sequence of characters, never what is meant).
    return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))


def check_options(section: str, name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Check the ``[section]`` options of plugin or algorithm ``name`` against the parameters of
    ``factory`` (its signature and type annotations): an unknown option or a value of the wrong
    type (``first_order = "yes"``, ``hidden = "40"``) is named before anything is built. Values
    are checked by the factory itself."""
    try:
        signature = inspect.signature(factory)
        hints = typing.get_type_hints(factory)
    except (TypeError, ValueError, NameError):  # builtins, unresolvable annotations: the factory checks
        return
    # An algorithm's factory is its ``__init__``: ``self`` is no option.
    params = {k: p for k, p in signature.parameters.items() if k != "self"}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = sorted(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL
                           and k not in ("in_features", "out_features", "model"))
            near = _did_you_mean(unknown, lambda k: next(iter(difflib.get_close_matches(k, known, n=1)), None))
            raise ConfigError(f"{section} {name!r} has no option(s) {unknown}{near}; its options: {known} "
                              f"(drop a key with --unset {section}.KEY)")
    for key, value in options.items():
        hint = hints.get(key)
        expected = None if hint is None else _describe(hint)
        if expected is not None and not _matches(value, hint):
            raise ConfigError(f"{section}.{key} must be {expected}, got {value!r}")


def load(source: str | Path, overrides: Iterable[str] = ()) -> Config:
    return validate(apply_overrides(read(source), overrides))
