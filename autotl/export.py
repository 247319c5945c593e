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
    try:
        refit_info = None
        calibration = dict(TrialRecord.from_trial(trial).calibration or {})
        if options.refit:
            state, calibration, refit_info = _refit(run, data, backbone, params, trial, device, say)
        else:
            state = load_weights(run.weights(trial))
        _check_merged(state)
        save_weights(tmp / WEIGHTS, state, {"format": FORMAT, "model": params["model"], "trial": str(trial.number)})
        backbone_config = backbone.bundle_files(tmp)
        settings = task.export_settings(recipe.data, backbone, params)
        config = _config(run, trial, choice.reason, params, backbone, backbone_config, settings, tmp, calibration,
                         refit_info, data_note)
        config.write(tmp)

        bundle = load(tmp, device=device, registry=run.registry)  # the round trip `autotl predict` makes
        config.cost.parameters = count_parameters(bundle.model)
        if data is not None:
            prepared = task.prepare(data, backbone, params)
            config.data.val_from_train = data.report.val_from_train
            _verify_scores(config, bundle, prepared, run.test_score(trial), trial, options.refit, say)
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


def _refit(run: Run, data: LoadedData, backbone: Backbone, params: Mapping[str, Any], trial: FrozenTrial,
           device: torch.device, say) -> tuple[dict, dict, dict]:
    """The trial's configuration trained again on train+val: the network's state, its calibration (fitted on
    train+val), and what the bundle's ``refit`` records."""
    from .adapt import merged
    from .training import train

    epochs = int(TrialRecord.from_trial(trial).best_epoch or params["epochs"])
    splits = run.task.prepare_refit(data, backbone, params)
    converged = params.get("head_fit") == "converged"  # a converged head fit has no epochs: fitted again
    how = (f"the head fitted to convergence again, C {float(params.get('head_fit_c', 1.0)):g}" if converged
           else f"{epochs} epoch(s), the trial's best epoch")
    say(f"Refitting trial {trial.number}'s configuration on train+val ({len(splits.train)} samples, {how}) ...")
    started = time.time()
    seed = run.record.seed + trial.number
    result = train(backbone, dict(params, epochs=epochs), splits.train, splits.val, run.target, run.width,
                   metric=run.metric, device=device, seed=seed)
    model = merged(result.adapted.model)  # the last epoch's weights: no held-out split chose an epoch
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    info = {"on": "train+val", "samples": len(splits.train), "epochs": epochs, "seed": seed,
            "duration_s": round(time.time() - started, 1),
            "note": ("the head fitted to convergence again on the training and validation splits together"
                     if converged else "trained again on the training and validation splits together, for the "
                     "trial's best number of epochs, keeping the last epoch") + "; no held-out split remains to "
                    "validate it"}
    return state, dict(result.calibration or {}), info


# -- what the bundle says about itself -------------------------------------------------------------

def _config(run: Run, trial: FrozenTrial, reason: str, params: Mapping[str, Any], backbone: Backbone,
            backbone_config: dict, settings: dict, tmp: Path, calibration: dict, refit: dict | None,
            data_note: str) -> BundleConfig:
    """The bundle's config as export first writes it: scores, cost and checks are filled in as they are known."""
    study, record, location = run.study, run.record, run.location
    recipe = record.recipe or {}
    test = None if refit else record.test_score(trial.number)
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
                      test_metrics={} if refit else record.test_metrics(trial.number)),
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
    """Score the loaded bundle on the search's splits with the calibration it holds (nothing tuned again); without
    --refit its validation score must be the one the trial recorded."""
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
        recorded = None if refit else test_score
        checks[f"test_{metric}"] = ScoreCheck(recorded=recorded, bundle=test,
                                              equal=None if recorded is None else test == recorded)
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
