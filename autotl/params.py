"""Typed trial parameters: each one's type, allowed values and default, declared once.

The core declares the parameters its training loop reads (:data:`CORE`); a task or backbone family
declares those it reads in its ``parameters`` attribute (:attr:`autotl.Task.parameters`,
:attr:`autotl.BackboneFamily.parameters`). A recipe's ``space``, ``fixed`` and ``start_with`` entries are
checked against them when the recipe is read (autotl/recipes.py), so that a misspelt name or a value a
trial cannot run with is refused before any trial, and :class:`TrainingParams` hands the training loop
its settings typed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

from .errors import UsageError

#: the kinds of value a parameter takes.
TYPES = ("int", "float", "categorical", "bool", "str")
#: how a trial's head is trained (``head_fit``): ``sgd``, the training loop, or ``converged``, the head alone fitted
#: to convergence on frozen features (autotl/head_fit.py).
HEAD_FITS = ("sgd", "converged")


class ParamError(ValueError):
    """A value a parameter does not take, or a name no one declares; the message says what is allowed."""


@dataclass(frozen=True)
class Param:
    """One parameter a trial runs with, in the manner of peft's validated config fields.

    :attr type: ``int``, ``float`` (a range ``low``..``high``, either bound open-ended when ``None``),
        ``categorical`` (one of ``choices``), ``bool`` or ``str`` (a name, such as a model's).
    :attr default: what the reader uses when no recipe names the parameter (``None``: decided elsewhere,
        e.g. the backbone's own input size, or required).
    :attr high_open: ``high`` itself is not allowed (``ema_decay`` < 1).
    :attr searchable: whether ``space`` and ``fixed`` may name it (``model`` is chosen by ``models:``).
    :attr aliases: other names users write for it (``learning_rate``), for the did-you-mean of a misspelt name.
    """

    name: str
    type: str
    doc: str = ""
    default: Any = None
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple | None = None
    searchable: bool = True
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {', '.join(TYPES)}, not {self.type!r}")
        if self.type == "categorical" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a categorical parameter needs choices")

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "float")

    def allowed(self) -> str:
        """What the parameter takes, in words: ``a whole number, 1 or more``, ``one of auto, fp32, bf16``."""
        if self.type == "categorical":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type == "bool":
            return "true or false"
        if self.type == "str":
            return "a name"
        what = "a whole number" if self.type == "int" else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} from {self.low:g} to {self.high:g}" + (f" ({self.high:g} excluded)" if self.high_open else "")
        if self.low is not None:
            return f"{what}, {self.low:g} or more"
        if self.high is not None:
            return f"{what}, at most {self.high:g}"
        return what

    def check(self, value: Any) -> Any:
        """``value`` as the parameter's type (a number YAML read as a string, ``1e-3``, is the number).

        :raises ParamError: ``must be <what is allowed>, not <value>``.
        """
        wrong = ParamError(f"must be {self.allowed()}, not {value!r}")
        if self.type == "categorical":
            if value not in self.choices:
                raise wrong
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise wrong
            return value
        if self.type == "str":
            if not isinstance(value, str) or not value:
                raise wrong
            return value
        number = to_number(value)
        if self.type == "int":
            if not float(number).is_integer():
                raise wrong
            number = int(number)
        else:
            number = float(number)
        if math.isinf(number) or (self.low is not None and number < self.low) or (
                self.high is not None and (number > self.high or (self.high_open and number == self.high))):
            raise wrong
        return number


def to_number(value: Any) -> int | float:
    """A number, or a string holding one: PyYAML (YAML 1.1) reads ``1e-3``, with no decimal point, as a string.

    :raises ParamError: ``must be a number, not <value>`` for anything else (booleans and NaN included).
    """
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ParamError(f"must be a number, not {value!r}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ParamError(f"must be a number, not {value!r}")
    return value


#: the parameters the core reads: the search space (autotl/space.py) and the training loop (autotl/training.py).
CORE: dict[str, Param] = {p.name: p for p in (
    Param("model", "str", "the source model (chosen from `models:` or --models; named only in start_with)",
          searchable=False),
    Param("freeze", "int", "layer groups kept frozen: 0 = full fine-tuning, the model's group count - 1 = linear "
          "probe; searched over the model's whole range unless bounded", default=0, low=0),
    Param("lora_rank", "int", "rank of the LoRA adapters on the unfrozen groups; 0 = none", default=0, low=0,
          aliases=("rank", "lora_r")),
    Param("lr", "float", "peak learning rate of AdamW (required: searched or fixed)", low=0,
          aliases=("learning_rate", "lrate")),
    Param("epochs", "int", "training epochs", default=10, low=1, aliases=("num_epochs", "max_epochs")),
    Param("batch_size", "int", "training batch size", default=32, low=1, aliases=("batch", "batchsize")),
    Param("weight_decay", "float", "AdamW weight decay", default=0.0, low=0),
    Param("warmup_epochs", "float", "epochs of linear warm-up before the cosine decay (fractions allowed)",
          default=0, low=0, aliases=("warmup", "warm_up_epochs")),
    Param("head_init", "categorical", "how the new head starts: zeros, or the layer's default random init",
          default="zeros", choices=("zeros", "default")),
    Param("ema_decay", "float", "exponential moving average of the weights, validated and kept; 0 = off",
          default=0.0, low=0, high=1, high_open=True, aliases=("ema",)),
    Param("precision", "categorical", "training forward pass: auto (bfloat16 autocast on a CUDA card that has "
          "it), fp32, or bf16 (CUDA only)", default="auto", choices=("auto", "fp32", "bf16")),
    Param("head_fit", "categorical", "how the head trains: sgd (AdamW over the epochs, the other settings), or "
          "converged (every group but the head frozen, the head fitted to convergence by full-batch L-BFGS on the "
          "frozen features; the search queues one such trial per model, recipe section converged_head)",
          default="sgd", choices=HEAD_FITS),
    Param("head_fit_c", "float", "inverse strength of the L2 penalty on the head's weights in a converged head "
          "fit (scikit-learn's C): the fit minimises the mean loss plus the squared weights' sum over 2 C n (n training "
          "items)", default=1.0, low=1e-6),
)}


@dataclass(frozen=True)
class ParameterSet:
    """The parameters a recipe may name: the core's and those the task and its backbone families declare.

    :attr strict: whether a name no one declares is refused; ``False`` where the task declares nothing
        (a third-party task written before declarations): such names pass to the task unchecked.
    :attr owner: who declared them, for messages (``task 'NAME'``).
    """

    params: Mapping[str, Param]
    strict: bool = True
    owner: str = "the core"

    def lookup(self, name: str) -> Param | None:
        """The declaration of ``name``; ``None`` for an undeclared name of a non-strict set.

        :raises ParamError: for a name no one declares (strict), with a did-you-mean where one is close.
        """
        if name in self.params:
            return self.params[name]
        if not self.strict:
            return None
        spelt = {alias: param.name for param in self.params.values() for alias in (param.name, *param.aliases)}
        close = difflib.get_close_matches(str(name), list(spelt), n=1, cutoff=0.6)
        hint = f" (did you mean {spelt[close[0]]!r}?)" if close else ""
        raise ParamError(f"unknown parameter {name!r} for {self.owner}{hint}; known: {', '.join(sorted(self.params))}")


#: the core's parameters alone; other names pass unchecked (a recorded recipe read back, or no task known).
CORE_ONLY = ParameterSet(CORE, strict=False)


def parameters_for(task: Any, families: Iterable[Any], *, strict: bool = True) -> ParameterSet:
    """The core's parameters with those ``task``, its target (:attr:`autotl.Target.parameters`) and ``families``
    declare (``parameters`` attributes).

    A task whose ``parameters`` is ``None`` declares nothing: the set is then not strict, so that its
    parameters reach it unchecked. A core name a plugin declares again keeps the core's declaration.
    """
    declared = dict(CORE)
    for owner in (task, getattr(task, "target", None), *families):
        for param in getattr(owner, "parameters", None) or ():
            declared.setdefault(param.name, param)
    strict = strict and getattr(task, "parameters", None) is not None
    return ParameterSet(declared, strict, f"task {task.name!r}")


@dataclass(frozen=True)
class TrainingParams:
    """The core training loop's settings, typed and checked against :data:`CORE`; defaults from there."""

    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    warmup_epochs: float
    freeze: int
    lora_rank: int
    head_init: str
    ema_decay: float
    precision: str
    head_fit: str
    head_fit_c: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainingParams":
        """Read a trial's parameters (a mapping with any other keys too).

        :raises UsageError: for a missing ``lr`` or a value its declaration does not allow.
        """
        values = {}
        for f in fields(cls):
            param = CORE[f.name]
            value = params.get(f.name)
            if value is None:
                value = param.default
            if value is None:
                raise UsageError(f"{f.name} is missing: give it in the recipe's space or fixed section")
            try:
                values[f.name] = param.check(value)
            except ParamError as exc:
                raise UsageError(f"{f.name} {exc}") from None
        return cls(**values)


__all__ = ["CORE", "CORE_ONLY", "HEAD_FITS", "TYPES", "Param", "ParamError", "ParameterSet", "TrainingParams", "parameters_for",
           "to_number"]
