"""The weights a search keeps for its trials: where they are written, found, checked and pruned.

A trial saves its weights (LoRA merged) under the run folder at
``trials/<study>/<NNNN>/model.safetensors`` (:func:`weights_path`), so that several studies can share
one run folder, and records that path, relative to the run folder, in its ``weights`` user
attribute. Every reader takes the recorded path: a run written before weights were keyed by study
(``trials/NNNN/model.safetensors``) still opens. The file's safetensors metadata names the study
and the trial (:func:`weights_metadata`); a file whose metadata names another is never read as,
nor deleted for, this trial (:func:`owner_problem`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .leaderboard import direction_sign, rank_key, selected_number
from .records import TrialRecord, is_converged_head
from .runs import DEFAULT_STUDY


def study_folder(study: str) -> str:
    """The folder name of ``study``'s trial weights: the name itself where it is a plain lower-case file name,
    else its safe characters and a short digest of the name (two names that read alike stay apart, also on
    a file system that ignores case)."""
    safe = re.sub(r"[^a-z0-9_.-]+", "_", study.lower()).strip("._-")[:60] or "study"
    if safe == study:
        return safe
    return f"{safe}-{hashlib.sha256(study.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def weights_path(out: Path, number: int, study: str = DEFAULT_STUDY) -> Path:
    """Where trial ``number`` of ``study`` writes its weights in run folder ``out``.

    Only for writing: readers take the path the trial recorded (:func:`recorded_weights`)."""
    return Path(out) / "trials" / study_folder(study) / f"{number:04d}" / "model.safetensors"


def val_outputs_path(weights: Path) -> Path:
    """Where the outputs on the validation split of the trial whose weights are ``weights`` lie, beside them: its
    best epoch's, saved with the weights (autotl/objective.py), read by the ensemble (autotl/after_search.py)."""
    return Path(weights).with_name("val_outputs.safetensors")


def weights_metadata(study: str, number: int, model: str) -> dict[str, str]:
    """The safetensors metadata of a trial's weights: whose they are."""
    return {"model": model, "study": study, "trial": str(number)}


def recorded_weights(trial: FrozenTrial, roots: Iterable[Path | str | None]) -> Path | None:
    """The weights ``trial`` recorded, in the first of ``roots`` (run folders) that holds them; ``None`` if it
    recorded none (its weights were never kept) or no root holds them (deleted by keep-top, or moved)."""
    rel = TrialRecord.from_trial(trial).weights
    if not rel:
        return None
    for root in roots:
        if root and (Path(root) / rel).is_file():
            return Path(root) / rel
    return None


def owner_problem(path: Path, study: str, number: int) -> str | None:
    """Why the weights file ``path`` is not trial ``number``'s of ``study`` (its metadata names another trial or
    study), or ``None``. A file without that metadata (written before it was recorded) is taken as it is."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # an unreadable file: its reader says so
        return None
    named_study, named_trial = meta.get("study"), meta.get("trial")
    if (named_study is not None and named_study != study) or (named_trial is not None and named_trial != str(number)):
        whose = f"trial {named_trial}" + (f" of study {named_study!r}" if named_study is not None else "")
        return f"{path} holds the weights of {whose}, not of trial {number} of study {study!r}"
    return None


def kept_weights(trial: FrozenTrial, roots: Iterable[Path | str | None], study: str) -> tuple[Path | None, str | None]:
    """``trial``'s kept weights, as every reader takes them: the file it recorded, in the first of ``roots`` (run
    folders) that holds it (``None``: see :func:`recorded_weights`), and why that file is not trial ``trial``'s of
    ``study`` (:func:`owner_problem`; ``None`` when it is, or when there is no file). Use the file only without a
    problem."""
    path = recorded_weights(trial, roots)
    return path, None if path is None else owner_problem(path, study, trial.number)


def ranks_in_top(study: optuna.Study, value: float, number: int, keep_top: int) -> bool:
    """Whether trial ``number``, scoring ``value``, ranks among the top ``keep_top`` completed trials of ``study``
    (by :func:`~autotl.leaderboard.rank_key`, in the study's direction): whether its weights are worth saving."""
    sign = direction_sign(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(rank_key(t, sign) < (-sign * value, number) for t in done) < keep_top


def drop_outside_top(study: optuna.Study, out: Path, keep_top: int) -> list[int]:
    """Delete the weights, in run folder ``out``, of the completed trials of ``study`` outside the top
    ``keep_top`` (ranked by :func:`~autotl.leaderboard.rank_key` in the study's direction), and of its failed trials (a failure after
    the weights were saved, or a trial failed under a paused worker).

    Call it only once Optuna has recorded the trials it ranks (an Optuna callback): a trial whose result is not
    recorded yet is neither ranked nor displaces one. Only files recorded by trials of this study, whose
    metadata names no other trial, are deleted; nor those of the trial the selection on small data chose
    (:func:`~autotl.leaderboard.selected_number`), nor those of converged-head trials (one per model, queued first:
    the cheap members an ensemble selected on out-of-fold outputs draws on, autotl/ensemble.py). Returns the numbers of the trials whose weights went."""
    sign = direction_sign(study)
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: rank_key(t, sign))
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    dropped, chosen = [], selected_number(study)
    for trial in [*complete[keep_top:], *failed]:
        if trial.number == chosen:  # the selection on small data chose it by cross-validation: it stays
            continue
        if trial.state == TrialState.COMPLETE and is_converged_head(trial):  # one per model: ensemble members
            continue
        path, problem = kept_weights(trial, [out], study.study_name)
        if path is None or problem:
            continue
        try:
            path.unlink()
        except OSError:  # gone already, or not ours to delete: the next trial's pruning tries again
            continue
        val_outputs_path(path).unlink(missing_ok=True)
        dropped.append(trial.number)
    return dropped


__all__ = ["drop_outside_top", "kept_weights", "owner_problem", "ranks_in_top", "recorded_weights", "study_folder", "val_outputs_path",
           "weights_metadata", "weights_path"]
