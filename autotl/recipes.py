"""Recipes: YAML presets holding a task's search space, fixed settings and starting points.

The built-in recipes live in the repository's ``recipes/`` folder (installed as ``autotl.recipes``);
``--recipe`` takes one of their names or a path to a file of the same shape.
"""

from __future__ import annotations

import inspect
import math
import warnings
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
#: the share of the training data held out for validation where the recipe's ``data`` names none.
VAL_FRACTION = 0.2
#: the ``prerank`` section's defaults (autotl/transfer.py; docs/recipes.md describes them).
PRERANK_DEFAULTS = {"enabled": True, "drop_below": 0.3, "max_samples": 2000, "batch_size": 64}
#: the ``cache`` section's defaults: the frozen-prefix cache (autotl/cache.py; docs/recipes.md).
CACHE_DEFAULTS = {"enabled": True, "memory_mb": 2048, "disk_mb": 4096, "dir": None}
#: the core parameters that are whole numbers, and their least value.
_WHOLE_PARAMS = {"epochs": 1, "batch_size": 1, "freeze": 0, "lora_rank": 0}
#: the core parameters that are numbers of 0 or more.
_REAL_PARAMS = ("lr", "weight_decay", "label_smoothing", "warmup_epochs", "ema_decay")
#: the core parameters that take one of a few words.
_WORD_PARAMS = {"precision": ("auto", "fp32", "bf16"), "head_init": ("zeros", "default")}
#: the ``sampler`` and ``pruner`` names a recipe may give, and the Optuna classes they make (autotl/search.py).
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
           "none": "NopPruner"}


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
        return float(self.data.get("val_fraction", VAL_FRACTION))


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
    fixed = {name: _core_value(name, value, f"fixed.{name}", fail) for name, value in (raw.get("fixed") or {}).items()}
    for name in ("lr",):
        if name not in space and name not in (raw.get("fixed") or {}):
            fail("space", f"`{name}` must be searched or fixed")
    start_with = raw.get("start_with") or []
    if not isinstance(start_with, list) or not all(isinstance(s, dict) for s in start_with):
        fail("start_with", "must be a list of parameter mappings")
    start_with = [{name: _core_value(name, value, f"start_with[{i}].{name}", fail) for name, value in point.items()}
                  for i, point in enumerate(start_with)]
    val_fraction = (raw.get("data") or {}).get("val_fraction", VAL_FRACTION)
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        fail("data.val_fraction", f"must be a number between 0 and 1, not {val_fraction!r}")
    return Recipe(
        task=raw["task"],
        source=source,
        description=str(raw.get("description") or "").strip(),
        models=models,
        data=dict(raw.get("data") or {}),
        space=space,
        fixed=fixed,
        start_with=start_with,
        sampler=_optuna_section("sampler", raw.get("sampler") or {}, SAMPLERS, "tpe", fail),
        pruner=_optuna_section("pruner", raw.get("pruner") or {}, PRUNERS, "median", fail),
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


def _optuna_section(name: str, spec: dict, classes: dict[str, str], default: str, fail) -> dict[str, Any]:
    """The ``sampler`` or ``pruner`` section: a known ``name`` and only the arguments its Optuna class takes."""
    import optuna

    kind = spec.get("name", default)
    if kind not in classes:
        fail(f"{name}.name", f"unknown {name} {kind!r}; use one of {', '.join(classes)}")
    cls = getattr(optuna.samplers if name == "sampler" else optuna.pruners, classes[kind])
    known = [p for p in inspect.signature(cls).parameters if p not in ("self", "seed")]
    unknown = sorted(set(spec) - {"name", *known})
    if unknown:
        fail(f"{name}.{unknown[0]}", f"unknown key for the {kind} {name}; known keys are "
                                     f"{', '.join(['name', *known])}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**{k: v for k, v in spec.items() if k != "name"})
    except (TypeError, ValueError) as exc:
        fail(name, f"{exc}; see Optuna's {classes[kind]}")
    return dict(spec)


def _core_value(name: str, value: Any, where: str, fail) -> Any:
    """A value of a core parameter checked (a number, or one of its words); a number written as a string
    (YAML reads ``1e-3`` so) is read as the number. Parameters of the task pass unchecked."""
    if name in _WHOLE_PARAMS:
        number = _number(value, where, fail)
        least = _WHOLE_PARAMS[name]
        if number is None or not float(number).is_integer() or number < least:
            fail(where, f"must be a whole number, {least} or more, not {value!r}")
        return int(number)
    if name in _REAL_PARAMS:
        number = _number(value, where, fail)
        if number is None or number < 0 or math.isinf(number):
            fail(where, f"must be a number, 0 or more, not {value!r}")
        return float(number)
    if name in _WORD_PARAMS and value not in _WORD_PARAMS[name]:
        fail(where, f"must be one of {', '.join(_WORD_PARAMS[name])}, not {value!r}")
    return value


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
        return ParamSpec(name, choices=tuple(_core_value(name, c, f"{where}.choices", fail) for c in choices))
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
