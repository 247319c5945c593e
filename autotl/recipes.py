"""Recipes: YAML presets holding a task's search space, fixed settings and starting points.

The built-in recipes live in the repository's ``recipes/`` folder (installed as ``autotl.recipes``);
``--recipe`` takes one of their names or a path to a file of the same shape.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .params import CORE, CORE_ONLY, Param, ParamError, ParameterSet, to_number

#: the defaults every trial's configuration records (the training loop's, autotl/params.py); the task's target
#: adds those of its own parameters (:func:`defaults_for`).
DEFAULTS = {name: CORE[name].default for name in ("epochs", "batch_size", "weight_decay", "warmup_epochs")}
_TOP_KEYS = {"task", "description", "metric", "models", "data", "space", "fixed", "start_with", "sampler", "pruner",
             "prerank", "cache", "selection", "converged_head"}
#: the share of the training data held out for validation where the recipe's ``data`` names none.
VAL_FRACTION = 0.2
#: the ``prerank`` section's defaults (autotl/transfer.py; docs/recipes.md describes them).
PRERANK_DEFAULTS = {"enabled": True, "drop_below": 0.3, "max_samples": 2000, "batch_size": 64}
#: the ``cache`` section's defaults: the frozen-prefix cache (autotl/cache.py; docs/recipes.md).
CACHE_DEFAULTS = {"enabled": True, "memory_mb": 2048, "disk_mb": 4096, "dir": None}
#: the ``selection`` section's defaults: the leading trials re-scored by k-fold cross-validation on small data, and
#: the chosen configuration trained again on train+val (autotl/selection.py; docs/recipes.md says why these numbers)
SELECTION_DEFAULTS = {"cv_below": 1000, "folds": 5, "candidates": 3, "with_converged": True, "prefer": "simpler",
                      "reserve": 0.25, "refit": "auto", "tie_break": "auto", "ship_ensemble": "auto"}
REFIT_CHOICES = ("auto", "always", "never")
PREFER_CHOICES = ("simpler", "best")
SHIP_ENSEMBLE_CHOICES = ("auto", "never")
#: the value of a ``space`` entry's ``fit`` field that lets the task fit the range to the data (autotl/fitted_space.py)
FIT_DATA = "data"
#: the ``converged_head`` section's defaults: a new study queues one converged-head trial per model first
#: (autotl/head_fit.py, autotl/controller.py; docs/recipes.md). ``C``: the inverse strength of its L2 penalty.
CONVERGED_HEAD_DEFAULTS = {"enabled": True, "C": 1.0}
#: the ``sampler`` and ``pruner`` names a recipe may give, and the Optuna classes they make (autotl/samplers.py).
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
           "none": "NopPruner"}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a number range (``low``, ``high``, ``log``) or ``choices``.

    ``type`` is the parameter's declared type (autotl/params.py): an ``int`` range is searched in whole
    numbers, a ``float`` one in real numbers, whatever the bounds look like. ``None`` (a parameter of a task
    that declares none): whole numbers when both bounds are whole and ``log`` is off.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    type: str | None = None
    #: ``fit: data`` in the recipe: the range is a fallback that the task may fit to the data it loads before a
    #: new study's first trial (autotl/fitted_space.py); a range without it is the user's and is never changed.
    fit: bool = False

    @property
    def kind(self) -> str:
        """How it is searched: ``categorical``, ``int`` or ``float``."""
        if self.choices is not None:
            return "categorical"
        if self.type in ("int", "float"):
            return self.type
        is_int = all(v is None or float(v).is_integer() for v in (self.low, self.high)) and not self.log
        return "int" if is_int else "float"

    def suggest(self, trial, low=None, high=None):
        low = self.low if low is None else low
        high = self.high if high is None else high
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high), log=self.log)
        return trial.suggest_float(self.name, float(low), float(high), log=self.log)


@dataclass
class Recipe:
    task: str
    source: str
    description: str = ""
    metric: str | None = None  # the metric trials are ranked by; None: the task's primary (see checked_metric)
    models: list[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    start_with: list[dict[str, Any]] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    prerank: dict[str, Any] = field(default_factory=lambda: dict(PRERANK_DEFAULTS))
    cache: dict[str, Any] = field(default_factory=lambda: dict(CACHE_DEFAULTS))
    selection: dict[str, Any] = field(default_factory=lambda: dict(SELECTION_DEFAULTS))
    converged_head: dict[str, Any] = field(default_factory=lambda: dict(CONVERGED_HEAD_DEFAULTS))
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


def parse_recipe(raw: Any, source: str, parameters: ParameterSet = CORE_ONLY) -> Recipe:
    """Check a recipe read from ``source`` and return it; every problem is one :class:`UsageError` naming the field.

    ``parameters`` (autotl/params.py, :func:`~autotl.params.parameters_for`) says which names ``space``,
    ``fixed`` and ``start_with`` may use and what values each takes; the default checks the core's and
    passes any other name unchecked (a recipe a study recorded, read back).
    """

    def fail(where: str, what: str):
        raise UsageError(f"recipe {source}: {where}: {what}")

    if not isinstance(raw, dict):
        fail("top level", "must be a mapping with at least `task` and `space`")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        fail(", ".join(sorted(unknown)), f"unknown key; known keys are {', '.join(sorted(_TOP_KEYS))}")
    if not isinstance(raw.get("task"), str):
        fail("task", "missing; name the task: `task: NAME`, one of those `autotl plugins` lists")
    for key in ("data", "space", "fixed", "sampler", "pruner", "prerank", "cache", "selection", "converged_head"):
        if not isinstance(raw.get(key) or {}, dict):
            fail(key, "must be a mapping")
    if raw.get("metric") is not None and not isinstance(raw["metric"], str):
        fail("metric", f"must be the name of one of the task's metrics, not {raw['metric']!r}")
    models = raw.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        fail("models", "must be a list of model names")
    space = {name: _param_spec(name, spec, _declared(parameters, name, "space", fail), fail)
             for name, spec in (raw.get("space") or {}).items()}
    fixed = _values(raw.get("fixed") or {}, "fixed", parameters, fail)
    for name in ("lr",):
        if name not in space and name not in (raw.get("fixed") or {}):
            fail("space", f"`{name}` must be searched or fixed")
    start_with = raw.get("start_with") or []
    if not isinstance(start_with, list) or not all(isinstance(s, dict) for s in start_with):
        fail("start_with", "must be a list of parameter mappings")
    start_with = [_values(point, f"start_with[{i}]", parameters, fail) for i, point in enumerate(start_with)]
    val_fraction = (raw.get("data") or {}).get("val_fraction", VAL_FRACTION)
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        fail("data.val_fraction", f"must be a number between 0 and 1, not {val_fraction!r}")
    return Recipe(
        task=raw["task"],
        source=source,
        description=str(raw.get("description") or "").strip(),
        metric=raw.get("metric"),
        models=models,
        data=dict(raw.get("data") or {}),
        space=space,
        fixed=fixed,
        start_with=start_with,
        sampler=_optuna_section("sampler", raw.get("sampler") or {}, SAMPLERS, "tpe", fail),
        pruner=_optuna_section("pruner", raw.get("pruner") or {}, PRUNERS, "median", fail),
        prerank=_prerank(raw.get("prerank") or {}, fail),
        cache=_cache(raw.get("cache") or {}, fail),
        selection=_selection(raw.get("selection") or {}, fail),
        converged_head=_converged_head(raw.get("converged_head") or {}, fail),
        raw=raw,
    )


def checked_metric(recipe: Recipe, target: Any) -> str:
    """The metric the search ranks trials by: the recipe's ``metric:``, else the primary of the task's ``target``
    (:class:`autotl.Target`); a name that is none of the target's metrics is a :class:`UsageError` naming them."""
    name = recipe.metric or target.primary
    if name not in target.metrics:
        raise UsageError(f"recipe {recipe.source}: metric: {name!r} is not a metric of task {recipe.task!r}; "
                         f"use one of {', '.join(target.metrics)} (its primary, {target.primary}, when left out)")
    return name


def defaults_for(target: Any) -> dict[str, Any]:
    """What every trial's configuration starts from: :data:`DEFAULTS` and the defaults of the parameters the
    task's ``target`` declares (:attr:`autotl.Target.parameters`)."""
    return {**DEFAULTS, **{p.name: p.default for p in getattr(target, "parameters", ()) if p.default is not None}}


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


def _selection(spec: dict, fail) -> dict[str, Any]:
    """The ``selection`` section: its known keys only, over :data:`SELECTION_DEFAULTS`, each checked."""
    unknown = sorted(set(spec) - set(SELECTION_DEFAULTS))
    if unknown:
        fail(f"selection.{unknown[0]}", f"unknown key; known keys are {', '.join(SELECTION_DEFAULTS)}")
    settings = {**SELECTION_DEFAULTS, **spec}
    for key, least in (("cv_below", 0), ("folds", 2), ("candidates", 1)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            what = ("a number of items (train+val) at or below which trials are re-scored by cross-validation; "
                    "0: never") if key == "cv_below" else f"a whole number of at least {least}"
            fail(f"selection.{key}", f"must be {what}, not {value!r}")
    reserve = settings["reserve"]
    if isinstance(reserve, bool) or not isinstance(reserve, (int, float)) or not 0 <= reserve < 1:
        fail("selection.reserve", f"must be the share of the time budget kept for selection and refit, at least 0 "
                                  f"and below 1, not {reserve!r}")
    settings["reserve"] = float(reserve)
    if settings["refit"] not in REFIT_CHOICES:
        fail("selection.refit", f"must be one of {', '.join(REFIT_CHOICES)}, not {settings['refit']!r}")
    if settings["prefer"] not in PREFER_CHOICES:
        fail("selection.prefer", f"must be simpler (of the candidates within a standard error of the best, the fewest "
                                 f"trainable parameters) or best (the best mean), not {settings['prefer']!r}")
    if settings["ship_ensemble"] not in SHIP_ENSEMBLE_CHOICES:
        fail("selection.ship_ensemble", f"must be auto (the ensemble ships where it was selected on out-of-fold outputs, "
                                        f"or on the validation split of large data, and beats the chosen trial there) "
                                        f"or never, not {settings['ship_ensemble']!r}")
    if not isinstance(settings["with_converged"], bool):
        fail("selection.with_converged", f"must be true or false, not {settings['with_converged']!r}")
    tie = settings["tie_break"]
    if tie is not None and not isinstance(tie, str):
        fail("selection.tie_break", f"must be auto, the name of one of the task's metrics, or null, not {tie!r}")
    return settings


def _converged_head(spec: dict, fail) -> dict[str, Any]:
    settings = _switched_section("converged_head", spec, CONVERGED_HEAD_DEFAULTS, fail)
    try:  # what the queued trials' head_fit_c takes
        settings["C"] = CORE["head_fit_c"].check(settings["C"])
    except ParamError as exc:
        fail("converged_head.C", f"{exc} (the inverse strength of the L2 penalty on the head's weights; 1.0 by "
                                 "default)")
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


def _declared(parameters: ParameterSet, name: Any, section: str, fail) -> Param | None:
    """The declaration of a parameter ``section`` names (``None``: undeclared, passed unchecked); or fail."""
    try:
        param = parameters.lookup(name)
    except ParamError as exc:
        fail(section, str(exc))
    if param is not None and not param.searchable and section in ("space", "fixed"):
        fail(f"{section}.{name}", f"`{name}` is neither searched nor fixed in a recipe; list the models under "
                                  "`models:` (or give --models), and name one in a start_with point to run it first")
    return param


def _values(point: dict, section: str, parameters: ParameterSet, fail) -> dict[str, Any]:
    """The ``fixed`` section or a ``start_with`` point: every name declared, every value checked and typed."""
    return {name: _checked(_declared(parameters, name, section, fail), value, f"{section}.{name}", fail)
            for name, value in point.items()}


def _checked(param: Param | None, value: Any, where: str, fail) -> Any:
    """``value`` as its declaration types it (a number YAML reads as a string, ``1e-3``, is the number)."""
    if param is None:
        return value
    try:
        return param.check(value)
    except ParamError as exc:
        fail(where, str(exc))


def _param_spec(name: str, spec: Any, param: Param | None, fail) -> ParamSpec:
    """A ``space`` entry: a range of a number parameter or choices of any, checked against its declaration."""
    where = f"space.{name}"
    if not isinstance(spec, dict):
        fail(where, "must be a mapping such as {low: 1e-4, high: 1e-2, log: true} or {choices: [...]}")
    unknown = set(spec) - {"low", "high", "log", "choices", "fit"}
    if unknown:
        fail(where, f"unknown field(s) {', '.join(sorted(unknown))}; use low, high, log, choices or fit")
    fit = spec.get("fit")
    if fit not in (None, FIT_DATA):
        fail(f"{where}.fit", f"must be `{FIT_DATA}` (the range is fitted to the data, this one the fallback) or "
                             f"left out (the range as written), not {fit!r}")
    if "choices" in spec and name == "freeze":
        fail(where, "takes {low, high} bounds (high at most the model's group count - 1; absent: all of them), "
                    "not choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            fail(where, "choices must be a non-empty list")
        return ParamSpec(name, choices=tuple(_checked(param, c, f"{where}.choices", fail) for c in choices),
                         type=param and param.type, fit=fit == FIT_DATA)
    if param is not None and not param.numeric:
        fail(where, f"`{name}` takes {param.allowed()}: search it as {{choices: [...]}}")
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
    low, high = (None if v is None else _checked(param, v, f"{where}.{key}", fail) for key, v in (("low", low),
                                                                                                  ("high", high)))
    return ParamSpec(name, low=low, high=high, log=log, type=param and param.type, fit=fit == FIT_DATA)


def _number(value: Any, where: str, fail) -> float | int | None:
    """A recipe number; YAML reads ``1e-3`` (no decimal point) as a string, so accept that too."""
    if value is None:
        return None
    try:
        return to_number(value)
    except ParamError as exc:
        fail(where, str(exc))
