"""``autotl export``: from a trial of a search to a self-describing bundle (see :mod:`autotl.bundle`).

The chosen trial's saved weights (already LoRA-merged by the search) are copied as safetensors, or,
with ``refit``, its configuration is trained again on train+val for the epochs of its best epoch.
The bundle is written to a temporary folder beside ``--out``, loaded back through the same loader
``autotl predict`` uses, checked (the validation score against the recorded one, optional ONNX and
TorchScript files against the PyTorch network: autotl/formats.py), and only then moved into place.
Scores are the task's target's (:meth:`autotl.Target.score`), with the calibration the trial recorded:
the bundle must reproduce the trial's recorded validation score on the metric the search ranked by.
Its config.json is a :class:`~autotl.bundle_config.BundleConfig`; its README.md comes from
autotl/card.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .base import Backbone, LoadedData, TensorSplit
from .bundle import Bundle, load, sha256_file
from .bundle_config import (CARD, CONFIG, FORMAT, WEIGHTS, BackboneInfo, BundleConfig, Cost, DataInfo, RefitInfo,
                            ScoreCheck, Scores, SearchInfo, TargetInfo, TrialInfo, WeightsInfo, library_versions)
from .card import model_card
from .device import resolve_device
from .errors import BundleError, UsageError
from .files import load_weights, save_weights
from .formats import FORMATS, export_format
from .latency import count_parameters, measure_model, sample_inputs
from .leaderboard import choose_trial
from .records import TrialRecord
from .run import Run
from .selection import recorded_refit, refit as refit_configuration
from .runs import RunLocation, load_study, redact


@dataclass
class ExportOptions:
    out: Path
    trial: int | None = None
    within: float | None = None
    refit: bool = False
    formats: tuple[str, ...] = ()
    data: Path | None = None
    weights: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    force: bool = False


@dataclass
class ExportResult:
    out: Path
    config: BundleConfig


def export_bundle(location: RunLocation | Run, options: ExportOptions,
                  say: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Write the bundle of one trial of the study at ``location`` (or of an open :class:`~autotl.run.Run`) to
    ``options.out``."""
    out = _check_options(options)
    run = location if isinstance(location, Run) else Run(location, load_study(location))
    study = run.study
    choice = choose_trial(study, number=options.trial, within=options.within)
    trial = choice.trial
    params = run.config(trial)
    say(f"Exporting trial {trial.number} ({params.get('model')}): {choice.reason}")
    # the saved trial weights replace every pretrained one: without --refit only the architecture is needed
    backbone = run.backbone(params["model"], pretrained=options.refit, weights=options.weights)
    task, recipe = run.task, run.recipe
    data, missing = run.load_data(options.data, needed_for="--refit" if options.refit else
                                  "--format" if options.formats else None)
    data_note = f"{missing}: the bundle's scores were not re-checked" if missing else ""
    device = resolve_device(options.device)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    stored, stored_record = (None, {}) if options.refit else recorded_refit(
        run.record, trial.number, [run.location.folder, run.record.out])
    try:
        refit_info = None
        calibration = dict(TrialRecord.from_trial(trial).calibration or {})
        recorded_test = _recorded_test(run, trial, refit=options.refit or stored is not None)
        if options.refit:
            state, calibration, refit_info = _refit(run, data, backbone, trial, device, say)
        elif stored is not None:  # the search refitted the chosen configuration on train+val: that model ships
            say(f"Shipping trial {trial.number}'s configuration as the search trained it again on train+val ({stored})")
            state = load_weights(stored)
            calibration = dict(stored_record.get("calibration") or {})
            refit_info = {k: stored_record[k] for k in ("on", "samples", "epochs", "seed", "duration_s", "note")}
        else:
            state = load_weights(run.weights(trial))
        _check_merged(state)
        save_weights(tmp / WEIGHTS, state, {"format": FORMAT, "model": params["model"], "trial": str(trial.number)})
        backbone_config = backbone.bundle_files(tmp)
        settings = task.export_settings(recipe.data, backbone, params)
        config = _config(run, trial, choice.reason, params, backbone, backbone_config, settings, tmp, calibration,
                         refit_info, data_note, recorded_test)
        config.write(tmp)

        bundle = load(tmp, device=device, registry=run.registry)  # the round trip `autotl predict` makes
        config.cost.parameters = count_parameters(bundle.model)
        if data is not None:
            prepared = task.prepare(data, backbone, params)
            config.data.val_from_train = data.report.val_from_train
            _verify_scores(config, bundle, prepared, recorded_test, trial, refit_info is not None, say)
            val = prepared.val
            config.cost.latency_at_export = measure_model(bundle.model, sample_inputs(val), device,
                                                          channels_last=backbone.channels_last)
            if options.formats:
                cpu_bundle = bundle if device.type == "cpu" else load(tmp, device="cpu", registry=run.registry)
                for fmt in options.formats:
                    config.formats[fmt] = export_format(fmt, cpu_bundle.model, val, tmp, say, target=cpu_bundle.target,
                                                        channels_last=backbone.channels_last)
        _record_files(config, tmp)
        config.write(tmp)
        (tmp / CARD).write_text(model_card(config), encoding="utf-8")
        _share(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"Bundle written to {out}")
    return ExportResult(out, config)


# -- choosing and reading ------------------------------------------------------------------------

def _check_options(options: ExportOptions) -> Path:
    """Refuse options that cannot go together, or an --out that is no place for the bundle; the --out folder."""
    if options.trial is not None and options.within is not None:
        raise UsageError("--trial and --within both choose the trial: give one of them")
    unknown = sorted(set(options.formats) - set(FORMATS))
    if unknown:
        raise UsageError(f"--format {', '.join(unknown)} is unknown; use {' or '.join(FORMATS)}")
    out = Path(options.out)
    _check_out(out, options.force)
    return out


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(f"--out {out} exists and is not empty; choose another folder, or --force to replace "
                             "the bundle in it")
        if not (out / CONFIG).is_file():
            raise UsageError(f"--force replaces only a bundle, and {out} holds none ({CONFIG} is missing); "
                             "choose another --out")


def _share(folder: Path) -> None:
    """The permissions of an ordinary folder and files (temporary ones are private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_merged(state: Mapping[str, torch.Tensor]) -> None:
    unmerged = [k for k in state if "lora_" in k or ".base_layer." in k or k.startswith("base_model.")]
    if unmerged:
        raise BundleError(f"the weights hold unmerged LoRA adapters ({unmerged[0]}, ...); a bundle holds the plain "
                          "network with LoRA merged")


def _refit(run: Run, data: LoadedData, backbone: Backbone, trial: FrozenTrial, device: torch.device,
           say) -> tuple[dict, dict, dict]:
    """The trial's configuration trained again on train+val (:func:`autotl.selection.refit`, as the search refits the
    one it chose): the network's state, its calibration (fitted on train+val), and what the bundle's ``refit``
    records."""
    made = refit_configuration(run.task, data, backbone, trial, run.target, run.width, metric=run.metric,
                               device=device, split_seed=run.record.seed, say=say)
    return made.state, made.calibration, made.info


def _recorded_test(run: Run, trial: FrozenTrial, *, refit: bool) -> float | None:
    """The test score the search recorded for the weights exported: the refit model's where ``refit`` (the search
    recorded the score of what it refitted), else the trial's own; ``None`` where it recorded none of those."""
    whose = (run.record.test_weights or {}).get(str(trial.number), "trial")
    return run.test_score(trial) if whose == ("refit" if refit else "trial") else None


# -- what the bundle says about itself -------------------------------------------------------------

def _config(run: Run, trial: FrozenTrial, reason: str, params: Mapping[str, Any], backbone: Backbone,
            backbone_config: dict, settings: dict, tmp: Path, calibration: dict, refit: dict | None,
            data_note: str, test: float | None) -> BundleConfig:
    """The bundle's config as export first writes it: scores, cost and checks are filled in as they are known
    (``test``: the test score the search recorded for these weights, if it did)."""
    study, record, location = run.study, run.record, run.location
    recipe = record.recipe or {}
    done = TrialRecord.from_trial(trial)
    weights = tmp / WEIGHTS
    return BundleConfig(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        task=record.task,
        label_names=list(record.label_names),
        backbone=BackboneInfo(family=backbone.family, name=params["model"], modality=backbone.modality,
                              description=backbone.describe(), config=backbone_config),
        preprocessing=settings,
        target=TargetInfo(metric=run.metric, direction=run.direction, width=run.width,
                          per_position=bool(run.target.per_position), calibration=calibration),
        trial=TrialInfo(number=trial.number, chosen_by=reason, rank=_rank(study, trial, run.direction),
                        params=dict(params), best_epoch=done.best_epoch, val_curve=done.val_curve),
        scores=Scores(metric=run.metric, val=trial.value, test=test,
                      test_from="search" if test is not None else None,
                      val_metrics=dict(done.val_metrics or {}),
                      test_metrics={} if test is None else record.test_metrics(trial.number)),
        refit=RefitInfo(**refit) if refit else None,
        cost=Cost(latency_at_search=done.latency),
        search=SearchInfo(location=location.describe(), study=location.study_name,
                          storage=redact(location.storage_url), created=record.created,
                          trials=_trial_states(study), models=record.models or None, space=recipe.get("space"),
                          fixed=recipe.get("fixed"), sampler=(recipe.get("sampler") or {}).get("name", "tpe"),
                          pruner=(recipe.get("pruner") or {}).get("name", "median"), seed=record.seed,
                          recipe_source=record.recipe_source),
        data=DataInfo(path=record.data, fingerprint=record.fingerprint,
                      val_fraction=(recipe.get("data") or {}).get("val_fraction"), note=data_note),
        weights=WeightsInfo(sha256=sha256_file(weights), bytes=weights.stat().st_size,
                            lora_rank=int(params.get("lora_rank", 0) or 0)),
        versions=library_versions(),
    )


def _trial_states(study: optuna.Study) -> dict[str, int]:
    """How many trials of the study are complete, pruned and failed."""
    states = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in states:
            states[t.state.name.lower()] += 1
    return states


def _rank(study: optuna.Study, trial: FrozenTrial, direction: str) -> int:
    """``trial``'s place among the study's complete trials by the leaderboard's order (1: the best): the better
    value in the metric's ``direction`` first, the lower number on a tie."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(t: FrozenTrial) -> tuple[float, int]:
        return sign * t.value, t.number

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return 1 + sum(key(t) < key(trial) for t in complete)


def _record_files(config: BundleConfig, folder: Path) -> None:
    """The sha256 of every file in ``folder`` but config.json and README.md, and of each format's file."""
    config.files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
                    if p.is_file() and p.relative_to(folder).as_posix() not in (CONFIG, CARD)}
    for info in config.formats.values():
        if info.get("file"):
            info["sha256"] = config.files[info["file"]]


def _verify_scores(config: BundleConfig, bundle: Bundle, prepared, test_score: float | None, trial: FrozenTrial,
                   refit: bool, say) -> None:
    """Score the loaded bundle on the search's splits with the calibration it holds (nothing tuned again); the
    trial's own weights must give the validation score the trial recorded, and any weights the test score the search
    recorded for them (``test_score``: ``None`` where it recorded none for these weights)."""
    config.data.sizes = {"train": len(prepared.train), "val": len(prepared.val),
                         "test": len(prepared.test) if prepared.test is not None else None}
    checks, metric = config.verification, config.target.metric
    if not refit:
        val = scored(bundle, prepared.val)[metric]
        checks[f"val_{metric}"] = ScoreCheck(recorded=trial.value, bundle=val, equal=val == trial.value)
        if val != trial.value:
            say(f"Warning: the bundle scores {val:.6f} ({metric}) on the validation split, the trial recorded "
                f"{trial.value:.6f}")
    if prepared.test is not None:
        metrics = scored(bundle, prepared.test)
        test = metrics[metric]
        recorded = test_score
        checks[f"test_{metric}"] = ScoreCheck(recorded=recorded, bundle=test,
                                              equal=None if recorded is None else test == recorded)
        if recorded is not None and test != recorded:
            say(f"Warning: the bundle scores {test:.6f} ({metric}) on the test split, the search recorded "
                f"{recorded:.6f} for these weights")
        if config.scores.test is None:
            config.scores.test = test
            config.scores.test_from = "export"
            config.scores.test_metrics = metrics


def scored(bundle: Bundle, split: TensorSplit) -> dict[str, float]:
    """Every metric of the bundle's target on ``split`` (``nan`` for an empty one), with the bundle's calibration."""
    if not len(split):
        return {name: float("nan") for name in bundle.target.metrics}
    return bundle.target.score(bundle.outputs(split), split.labels, bundle.calibration)


__all__ = ["ExportOptions", "ExportResult", "export_bundle", "scored"]
