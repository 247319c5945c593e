"""Recipes: YAML presets holding a task's search space, fixed settings and starting points.

The built-in recipes live in the repository's ``recipes/`` folder (installed as ``autotl.recipes``);
``--recipe`` takes one of their names or a path to a file of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

#: parameters the core itself interprets; every other parameter is handed to the task.
CORE_PARAMS = ("model", "freeze", "lora_rank", "lr", "epochs", "batch_size", "weight_decay",
               "label_smoothing", "warmup_epochs", "head_init", "ema_decay", "precision")
DEFAULTS = {"epochs": 10, "batch_size": 32, "weight_decay": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0}
_TOP_KEYS = {"task", "description", "models", "data", "space", "fixed", "start_with", "sampler", "pruner", "prerank",
             "cache"}
#: the ``prerank`` section's defaults (autotl/transfer.py; docs/recipes.md describes them).
PRERANK_DEFAULTS = {"enabled": True, "drop_below": 0.3, "max_samples": 2000, "batch_size": 64}
#: the ``cache`` section's defaults: the frozen-prefix cache (autotl/cache.py; docs/recipes.md).
CACHE_DEFAULTS = {"enabled": True, "memory_mb": 2048, "disk_mb": 4096, "dir": None}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a float or int range (``low``, ``high``, ``log``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        is_int = all(v is None or float(v).is_integer() for v in (self.low, self.high)) and not self.log
        return "int" if is_int and self.name not in ("lr", "weight_decay") else "float"

    def suggest(self, trial, low=None, high=None):
        low = self.low if low is None else low
        high = self.high if high is None else high
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high))
        return trial.suggest_float(self.name, float(low), float(high), log=self.log)


@dataclass
class Recipe:
    task: str
    source: str
    description: str = ""
    models: list[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    start_with: list[dict[str, Any]] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    prerank: dict[str, Any] = field(default_factory=lambda: dict(PRERANK_DEFAULTS))
    cache: dict[str, Any] = field(default_factory=lambda: dict(CACHE_DEFAULTS))
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def val_fraction(self) -> float:
        return float(self.data.get("val_fraction", 0.2))


def builtin_recipes() -> dict[str, Path]:
    """Names of the built-in recipes and their files."""
    folder = resources.files("autotl._recipes")
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a built-in recipe by name, or a recipe file by path, and validate it."""
    text_path = Path(name_or_path)
    builtin = builtin_recipes()
    if str(name_or_path) in builtin:
        text_path = builtin[str(name_or_path)]
    elif not text_path.is_file():
        names = ", ".join(sorted(builtin)) or "none"
        raise UsageError(f"recipe {str(name_or_path)!r} is neither a file nor a built-in recipe ({names})")
    try:
        raw = yaml.safe_load(text_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"recipe {text_path}{at} is not valid YAML: {getattr(exc, 'problem', exc)}; fix that line "
                         "(docs/recipes.md shows the format)") from exc
    return parse_recipe(raw, str(text_path))


def parse_recipe(raw: Any, source: str) -> Recipe:
    def fail(where: str, what: str):
        raise UsageError(f"recipe {source}: {where}: {what}")

    if not isinstance(raw, dict):
        fail("top level", "must be a mapping with at least `task` and `space`")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        fail(", ".join(sorted(unknown)), f"unknown key; known keys are {', '.join(sorted(_TOP_KEYS))}")
    if not isinstance(raw.get("task"), str):
        fail("task", "missing; name the task, e.g. `task: image-classification`")
    for key in ("data", "space", "fixed", "sampler", "pruner", "prerank", "cache"):
        if not isinstance(raw.get(key) or {}, dict):
            fail(key, "must be a mapping")
    models = raw.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        fail("models", "must be a list of model names")
    space = {name: _param_spec(name, spec, fail) for name, spec in (raw.get("space") or {}).items()}
    for name in ("lr",):
        if name not in space and name not in (raw.get("fixed") or {}):
            fail("space", f"`{name}` must be searched or fixed")
    start_with = raw.get("start_with") or []
    if not isinstance(start_with, list) or not all(isinstance(s, dict) for s in start_with):
        fail("start_with", "must be a list of parameter mappings")
    val_fraction = (raw.get("data") or {}).get("val_fraction", 0.2)
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        fail("data.val_fraction", f"must be a number between 0 and 1, not {val_fraction!r}")
    return Recipe(
        task=raw["task"],
        source=source,
        description=str(raw.get("description") or "").strip(),
        models=models,
        data=dict(raw.get("data") or {}),
        space=space,
        fixed=dict(raw.get("fixed") or {}),
        start_with=start_with,
        sampler=dict(raw.get("sampler") or {}),
        pruner=dict(raw.get("pruner") or {}),
        prerank=_prerank(raw.get("prerank") or {}, fail),
        cache=_cache(raw.get("cache") or {}, fail),
        raw=raw,
    )


def _switched_section(name: str, spec: dict, defaults: dict[str, Any], fail) -> dict[str, Any]:
    """A section with an ``enabled`` switch: its known keys only, over its defaults."""
    unknown = set(spec) - set(defaults)
    if unknown:
        fail(f"{name}.{sorted(unknown)[0]}", f"unknown key; known keys are {', '.join(defaults)}")
    settings = {**defaults, **spec}
    if not isinstance(settings["enabled"], bool):
        fail(f"{name}.enabled", f"must be true or false, not {settings['enabled']!r}")
    return settings


def _prerank(spec: dict, fail) -> dict[str, Any]:
    settings = _switched_section("prerank", spec, PRERANK_DEFAULTS, fail)
    drop = settings["drop_below"]
    if drop is not None:
        drop = _number(drop, "prerank.drop_below", fail)
        if drop < 0:
            fail("prerank.drop_below", f"must be a LogME gap of 0 or more (or null: drop nothing), not {drop}")
    settings["drop_below"] = drop
    for key in ("max_samples", "batch_size"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            fail(f"prerank.{key}", f"must be a whole number of at least 2, not {value!r}")
    return settings


def _cache(spec: dict, fail) -> dict[str, Any]:
    settings = _switched_section("cache", spec, CACHE_DEFAULTS, fail)
    for key in ("memory_mb", "disk_mb"):
        value = _number(settings[key], f"cache.{key}", fail)
        if value is None or value < 0:
            fail(f"cache.{key}", f"must be a number of MiB, 0 or more (0: keep nothing there), not {settings[key]!r}")
        settings[key] = value
    if settings["dir"] is not None and not isinstance(settings["dir"], str):
        fail("cache.dir", f"must be a folder path (or null: $AUTOTL_CACHE_DIR, else ~/.cache/autotl/features), "
                          f"not {settings['dir']!r}")
    return settings


def _param_spec(name: str, spec: Any, fail) -> ParamSpec:
    where = f"space.{name}"
    if not isinstance(spec, dict):
        fail(where, "must be a mapping such as {low: 1e-4, high: 1e-2, log: true} or {choices: [...]}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        fail(where, f"unknown field(s) {', '.join(sorted(unknown))}; use low, high, log or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            fail(where, "choices must be a non-empty list")
        return ParamSpec(name, choices=tuple(choices))
    low = _number(spec.get("low"), f"{where}.low", fail)
    high = _number(spec.get("high"), f"{where}.high", fail)
    if name != "freeze" and (low is None or high is None):
        fail(where, "needs both low and high (or choices)")
    if low is not None and high is not None and low > high:
        fail(where, f"low ({low}) is above high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        fail(f"{where}.log", f"must be true or false, not {log!r}")
    if log and low is not None and low <= 0:
        fail(where, "a log scale needs low > 0")
    return ParamSpec(name, low=low, high=high, log=log)


def _number(value: Any, where: str, fail) -> float | int | None:
    """A recipe number; YAML reads ``1e-3`` (no decimal point) as a string, so accept that too."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            fail(where, f"must be a number, not {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        fail(where, f"must be a number, not {value!r}")
    return value
