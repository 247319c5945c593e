"""What a search records in its Optuna study: the study's record and each trial's, declared in one place.

A search keeps everything it knows about a run in the study's user attributes (so that a run folder,
or a shared PostgreSQL study, describes itself): :class:`StudyRecord` for the study (what the search
is: task, data, recipe, models, seed...; and what it adds later: test scores, the scratch baseline,
the transferability pre-ranking), :class:`TrialRecord` for one trial (its configuration, curves,
costs, weights, why it stopped or failed). Every attribute name is a field name here, and every
reader goes through :meth:`StudyRecord.from_study` / :meth:`TrialRecord.from_trial`; the writers are
:func:`begin_study`, :func:`record_test_score`, :func:`record_scratch`, :func:`record_ensemble`,
:func:`record_transferability`, :func:`record_selection`, :func:`record_refit` and :func:`record_trial`. In the manner
of timm's ``PretrainedCfg`` and peft's config dataclasses.

The record is versioned (:data:`RECORD_VERSION`, stored as ``record_version``). A study that holds no
version was written before versions were recorded (autotl up to 6f673bc), in the layout of version 1;
one of a newer version than this autotl reads is refused (:func:`check_version`).

Crash safety: a search begins a study by writing the description's keys one by one (for the
readers), then the whole description in one step (:data:`DESCRIPTION`), then ``created``. A study
holding the description has been begun; one with a task but no description was cut while being
recorded (:func:`half_recorded`) and is recorded anew by the next search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import RunError

#: the layout of the run record this autotl writes; it reads this one and every older one.
RECORD_VERSION = 1
#: the study attribute holding the record's version (absent: version 1, written before versions were).
VERSION_ATTR = "record_version"
#: The study attribute holding the whole description of a study, written last when a search begins it:
#: a study has been begun once this is there. The same keys are also written one by one (before it,
#: ``created`` after it) for the readers; studies begun before this existed have only those, ``created``
#: the last of them.
DESCRIPTION = "description"
#: the keys a study begun before :data:`DESCRIPTION` existed holds, one by one.
LEGACY_KEYS = ("task", "data", "fingerprint", "label_names", "recipe", "recipe_source", "seed", "models",
               "weights_files", "out", "created")
#: the study attribute holding the transferability pre-ranking (a list of rows, see autotl/transfer.py).
TRANSFERABILITY_ATTR = "transferability"
#: the study attribute holding the models the pre-ranking dropped from the search ({model: why}).
PRERANK_DROPPED_ATTR = "prerank_dropped"
#: the Optuna system attributes of a trial queued to retry an interrupted one, as Optuna's
#: ``RetryHeartbeatStaleTrialCallback`` writes them: the number of the trial it retries, and the numbers
#: of the trials retried on the way to it (:func:`retry_attrs`, :func:`retry_of`).
FAILED_TRIAL_ATTR = "failed_trial"
RETRY_HISTORY_ATTR = "retry_history"


@dataclass
class StudyRecord:
    """What a search records about its study.

    The fields up to ``created`` form the description, written once when the search begins the study;
    the fields after it are added later. A field the study lacks takes its default, so a study begun by
    another tool (or an older autotl) reads as far as it goes.
    """

    task: str | None = None
    data: str | None = None  # the data folder, resolved
    fingerprint: str | None = None  # the data's, as the task computed it
    label_names: list[str] = field(default_factory=list)
    recipe: dict[str, Any] | None = None  # the recipe as read (Recipe.raw)
    recipe_source: str | None = None
    seed: int = 0  # the split's: every later process loads the data with it
    models: dict[str, str] = field(default_factory=dict)  # {model: its description}
    weights_files: dict[str, str] = field(default_factory=dict)  # {model: checkpoint file}, for export --refit
    out: str | None = None  # the run folder of the search that began it (where its trials' weights lie)
    keep_top: int | None = None
    #: the metric the study ranks trials by (the recipe's ``metric:``); ``None`` in a study begun before it
    #: was recorded: the task's primary metric then (:meth:`metric_for`)
    metric: str | None = None
    #: the ranges fitted to the data before the first trial (autotl/fitted_space.py): ``[{param, choices | low,
    #: high, why}]`` in place of the recipe's ``fit: data`` ranges; ``None`` where none was (or before it existed)
    fitted_space: list[dict[str, Any]] | None = None
    created: str | None = None
    record_version: int = RECORD_VERSION
    # -- added after the search began the study
    test_scores: dict[str, float] = field(default_factory=dict)  # {trial number: its test score, in the metric}
    #: {trial number: every metric of the task's target on the test split}, beside ``test_scores``
    all_test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    scratch: dict[str, Any] | None = None  # the from-scratch baseline (Search.scratch_baseline)
    transferability: list[dict[str, Any]] | None = None  # the pre-ranking's rows
    prerank_dropped: dict[str, str] = field(default_factory=dict)
    prerank_skipped: str | None = None  # why the pre-ranking was left out (the task's target gives nothing to rank by)
    #: the ensemble of kept trials selected after the search (:func:`record_ensemble`; autotl/ensemble.py)
    ensemble: dict[str, Any] | None = None
    #: the selection on small data (autotl/selection.py): the leading trials re-scored by k-fold cross-validation,
    #: each candidate's fold scores, mean, standard error, out-of-fold score and seconds, the trial chosen and why,
    #: the cost; ``None``: no selection ran (large data, or a study begun before it existed)
    selection: dict[str, Any] | None = None
    #: the chosen trial's configuration trained again on train+val (autotl/selection.py ``refit``): ``trial``,
    #: ``weights`` (relative to the run folder), ``calibration`` and how it was trained; ``None``: none was
    refit: dict[str, Any] | None = None
    #: {trial number: which weights its recorded test score is of}: ``"refit"`` (trained on train+val) or ``"trial"``
    #: (the trial's own); a trial missing here was scored with its own weights
    test_weights: dict[str, str] = field(default_factory=dict)
    #: whether the study holds a whole description (False: nobody began it, or its creator was cut)
    begun: bool = False

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "StudyRecord":
        """The record of a study whose user attributes are ``attrs``, as its readers take it: each key as the
        study holds it one by one, else as its description holds it (check the version first)."""
        described = _description(attrs)
        values = {key: attrs[key] if key in attrs else described[key] for key in _DESCRIBED
                  if key in attrs or key in (described or {})}
        return cls._made(values, attrs, begun=described is not None)

    @classmethod
    def described(cls, attrs: Mapping[str, Any]) -> "StudyRecord | None":
        """The record as the search that began the study described it (its :data:`DESCRIPTION`), which decides
        what a later process of the search takes; ``None`` for a study nobody began (or half-recorded)."""
        described = _description(attrs)
        if described is None:
            return None
        return cls._made({key: described[key] for key in _DESCRIBED if key in described}, attrs, begun=True)

    @classmethod
    def _made(cls, values: dict[str, Any], attrs: Mapping[str, Any], begun: bool) -> "StudyRecord":
        later = {key: attrs[key] for key in _LATER if attrs.get(key) is not None}
        record = cls(**values, **later, begun=begun)
        record.record_version = record_version(attrs)
        record.seed = int(record.seed or 0)
        return record

    @classmethod
    def from_study(cls, study) -> "StudyRecord":
        """The record of an Optuna study."""
        return cls.from_attrs(study.user_attrs)

    def description(self) -> dict[str, Any]:
        """The description as the study stores it (:data:`DESCRIPTION`): the fields up to ``record_version``."""
        return {key: getattr(self, key) for key in _DESCRIBED}

    def test_score(self, number: int | None) -> float | None:
        """The test score (in the study's metric) recorded for trial ``number``, if it was scored."""
        return None if number is None else (self.test_scores or {}).get(str(number))

    def test_metrics(self, number: int | None) -> dict[str, float]:
        """Every metric recorded on the test split for trial ``number`` (``{}``: not scored, or scored before
        they were recorded)."""
        return {} if number is None else dict((self.all_test_metrics or {}).get(str(number)) or {})

    def metric_for(self, task: Any) -> str:
        """The metric the study ranks by: the recorded one, else (a study begun before it was recorded) the
        primary metric of ``task``'s target (``task``: the :class:`autotl.Task` the study searched)."""
        target = task.target.for_labels(list(self.label_names)) if self.label_names else task.target
        return self.metric or target.primary


#: the description's keys, in the order they are written; `created` is written last, after DESCRIPTION.
_DESCRIBED = ("record_version", "task", "data", "fingerprint", "label_names", "recipe", "recipe_source", "seed",
              "models", "weights_files", "out", "keep_top", "metric", "fitted_space", "created")
_LATER = ("test_scores", "all_test_metrics", "scratch", TRANSFERABILITY_ATTR, PRERANK_DROPPED_ATTR, "prerank_skipped",
          "ensemble", "selection", "refit", "test_weights")


def _description(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the search that began the study recorded; ``None`` for a study nobody began, or one whose creator
    was interrupted while recording it."""
    if isinstance(attrs.get(DESCRIPTION), dict):
        return dict(attrs[DESCRIPTION])
    if "created" in attrs:  # begun by an autotl that wrote the keys one by one, ``created`` last
        return {key: attrs[key] for key in LEGACY_KEYS if key in attrs}
    return None


def begun(attrs: Mapping[str, Any]) -> bool:
    """Whether a search recorded the whole description of the study with these user attributes."""
    return _description(attrs) is not None


def half_recorded(attrs: Mapping[str, Any]) -> bool:
    """Whether a search began recording the study (its task is there) but did not finish."""
    return bool(attrs.get("task")) and not begun(attrs)


def _recorded_version(attrs: Mapping[str, Any]) -> Any:
    """The version a study's user attributes record, as stored: 1 where none is recorded (autotl <= 6f673bc)."""
    described = attrs.get(DESCRIPTION) if isinstance(attrs.get(DESCRIPTION), dict) else {}
    return attrs.get(VERSION_ATTR, described.get(VERSION_ATTR, 1))


def record_version(attrs: Mapping[str, Any]) -> int:
    """The version of the run record in a study's user attributes: 1 where none is recorded (autotl <= 6f673bc);
    -1 where the recorded one is no version (not a whole number of at least 1: the record is corrupt)."""
    version = _recorded_version(attrs)
    try:
        number = int(version)
    except (TypeError, ValueError, OverflowError):
        return -1
    if isinstance(version, bool) or (isinstance(version, float) and number != version):
        return -1
    return number if number >= 1 else -1


def check_version(attrs: Mapping[str, Any], where: str) -> None:
    """Refuse a study whose run record this autotl cannot read: a corrupt version, or a newer autotl's."""
    version = record_version(attrs)
    if version < 1:
        raise RunError(f"{where} holds a corrupt run record (its {VERSION_ATTR} is {_recorded_version(attrs)!r}, no "
                       "version): start a new run with another --out, or restore the run folder from a copy")
    if version > RECORD_VERSION:
        raise RunError(f"{where} holds a run record of version {version}, written by a newer autotl; this autotl "
                       f"reads version {RECORD_VERSION} and older: upgrade autotl (pip install -U autotl) to open it")


def begin_study(study, record: StudyRecord, before_description: Callable[[], None] = lambda: None) -> None:
    """Record ``record``'s description in a new study, crash-safe.

    The keys one by one first (for the readers), then ``before_description()`` (the search queues its
    start points there), then the whole description in one step: from then on the study is begun; then
    ``created`` (the last key of the older layout). A process cut anywhere before the description leaves a
    half-recorded study, which the next search records anew.
    """
    description = record.description()
    for key, value in description.items():
        if key != "created":
            study.set_user_attr(key, value)
    before_description()
    study.set_user_attr(DESCRIPTION, description)  # last, in one step: now the study is begun
    study.set_user_attr("created", description["created"])


def complete_keys(study) -> None:
    """Write the description's keys a creator stopped before writing one by one (between the description and
    ``created``)."""
    attrs = study.user_attrs
    for key, value in (_description(attrs) or {}).items():
        if key not in attrs:
            study.set_user_attr(key, value)


def record_test_score(study, number: int, value: float, metrics: Mapping[str, float] | None = None,
                      weights: str = "trial") -> None:
    """Record trial ``number``'s test score (``value``, in the study's metric) beside those recorded already, and
    with ``metrics`` every metric of the target on the test split; ``weights`` says whose: ``"trial"`` (its own) or
    ``"refit"`` (its configuration trained again on train+val, :attr:`StudyRecord.refit`)."""
    record = StudyRecord.from_study(study)
    scores = dict(record.test_scores or {})
    scores[str(number)] = value
    study.set_user_attr("test_scores", scores)
    if metrics is not None:
        study.set_user_attr("all_test_metrics", {**(record.all_test_metrics or {}), str(number): dict(metrics)})
    study.set_user_attr("test_weights", {**(record.test_weights or {}), str(number): weights})


def record_selection(study, selection: Mapping[str, Any]) -> None:
    """Record the selection on small data as it stands (autotl/selection.py): written again after each candidate,
    so that an interrupted selection keeps every candidate it finished."""
    study.set_user_attr("selection", dict(selection))


def record_refit(study, refit: Mapping[str, Any] | None) -> None:
    """Record the chosen configuration trained again on train+val (``None``: forget a refit made stale)."""
    study.set_user_attr("refit", None if refit is None else dict(refit))


def record_scratch(study, scratch: dict[str, Any]) -> None:
    """Record the from-scratch baseline (see ``Search.scratch_baseline``)."""
    study.set_user_attr("scratch", scratch)


def record_ensemble(study, ensemble: dict[str, Any]) -> None:
    """Record the ensemble of kept trials selected after the search (see ``autotl.after_search.ensemble_after_search``):
    its members and weights, scores, calibration, summed latency and parameters."""
    study.set_user_attr("ensemble", ensemble)


def record_transferability(study, rows: list[dict[str, Any]], dropped: dict[str, str]) -> None:
    """Record the transferability pre-ranking's rows and the models it dropped from the search."""
    study.set_user_attr(TRANSFERABILITY_ATTR, rows)
    study.set_user_attr(PRERANK_DROPPED_ATTR, dropped)


def record_prerank_skipped(study, why: str) -> None:
    """Record why the transferability pre-ranking was left out (the models keep their order)."""
    study.set_user_attr("prerank_skipped", why)


def retry_attrs(trial) -> dict[str, Any]:
    """The Optuna system attributes of a new trial retrying the interrupted ``trial``: its own, with
    :data:`FAILED_TRIAL_ATTR` (the first trial retried, kept from ``trial`` if it was a retry itself) and
    :data:`RETRY_HISTORY_ATTR` (every trial retried so far, ``trial`` last)."""
    attrs = {FAILED_TRIAL_ATTR: trial.number, RETRY_HISTORY_ATTR: [], **trial.system_attrs}
    attrs[RETRY_HISTORY_ATTR] = [*attrs[RETRY_HISTORY_ATTR], trial.number]
    return attrs


def retry_of(trial) -> int | None:
    """The number of the interrupted trial that ``trial`` retries; ``None`` when it is no retry."""
    return trial.system_attrs.get(FAILED_TRIAL_ATTR)


@dataclass
class TrialRecord:
    """What a search records about one trial (its user attributes); every field may be missing (``None``)."""

    worker: str | None = None  # host:pid of the process that ran it
    config: dict[str, Any] | None = None  # every setting, sampled and fixed
    stopped: str | None = None  # why it stopped early (pruned, time budget)
    shortened: str | None = None  # why it ran fewer epochs than sampled: the time left (autotl/budget.py)
    error: str | None = None  # why it failed
    best_epoch: int | None = None  # 1-based
    val_curve: list[float] | None = None  # the study's metric after each epoch
    #: every metric of the task's target at the best epoch, name -> value ({} in older records)
    val_metrics: dict[str, float] = field(default_factory=dict)
    #: the target's calibration at the best epoch: fit on the training labels, tuned on validation
    #: (:class:`autotl.Target`); what the trial's network is scored and decoded with ({} in older records)
    calibration: dict[str, Any] = field(default_factory=dict)
    epoch_seconds: list[float] | None = None
    timing: dict[str, float] | None = None  # seconds: step, eval, data, prefix, setup, keep (after training)
    cache: dict[str, Any] | None = None  # how the frozen-prefix cache served it
    #: how its converged head fit went (``head_fit: converged``): iterations, objective, gradient, converged, C...
    converged_fit: dict[str, Any] | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    inference_params: int | None = None  # the deployed network's (LoRA merged)
    latency: dict[str, Any] | None = None  # see autotl/latency.py
    latency_error: str | None = None
    weights: str | None = None  # its kept weights, relative to the run folder

    @classmethod
    def from_trial(cls, trial) -> "TrialRecord":
        """The record of an Optuna trial (frozen or live)."""
        attrs = trial.user_attrs
        return cls(**{name: attrs[name] if attrs.get(name) is not None else ({} if name in _DICTS else None)
                      for name in _TRIAL_FIELDS})

    @staticmethod
    def params(trial) -> dict[str, Any]:
        """The trial's whole configuration: the recorded ``config``, else Optuna's sampled parameters, else (a trial
        queued and waiting to run) the parameters it was queued with."""
        return dict(trial.user_attrs.get("config") or trial.params or trial.system_attrs.get("fixed_params") or {})


def is_converged_head(trial) -> bool:
    """Whether ``trial`` (frozen, live or queued) is a converged-head trial: its head alone fitted to convergence on
    frozen features (``head_fit: converged``, autotl/head_fit.py)."""
    return TrialRecord.params(trial).get("head_fit") == "converged"


_TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))
#: the fields a trial that recorded none reads as ``{}`` (every other one: ``None``)
_DICTS = frozenset(f.name for f in dataclasses.fields(TrialRecord) if f.default_factory is dict)


def record_trial(trial, **values: Any) -> None:
    """Record fields of :class:`TrialRecord` on a running trial; a name that is no field is a bug."""
    for name, value in values.items():
        if name not in _TRIAL_FIELDS:
            raise TypeError(f"{name!r} is not a field of TrialRecord")
        trial.set_user_attr(name, value)


def record_trial_error(storage, trial_id: int, error: str) -> None:
    """Record why a trial failed (:attr:`TrialRecord.error`) straight in ``storage`` (an Optuna storage), for a
    trial no live process runs (``trial_id``: the storage's id of the trial, not its number)."""
    storage.set_trial_user_attr(trial_id, "error", error)


__all__ = ["DESCRIPTION", "FAILED_TRIAL_ATTR", "PRERANK_DROPPED_ATTR", "RECORD_VERSION", "RETRY_HISTORY_ATTR",
           "StudyRecord", "TRANSFERABILITY_ATTR", "TrialRecord", "VERSION_ATTR", "begin_study", "begun",
           "check_version", "complete_keys", "half_recorded", "is_converged_head", "record_ensemble", "record_prerank_skipped", "record_refit",
           "record_scratch", "record_selection", "record_test_score", "record_trial",
           "record_trial_error", "record_transferability", "record_version", "retry_attrs", "retry_of"]
