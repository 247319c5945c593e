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
from dataclasses import dataclass, field, replace
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
from .errors import BundleError, RunError, UsageError
from .files import load_weights, save_weights
from .formats import FORMATS, export_format
from .latency import count_parameters, measure_model, sample_inputs
from .leaderboard import choose_trial, rank_key
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
    #: export the search's recorded ensemble (autotl/ensemble.py) as one bundle, or with ``members`` an ensemble of
    #: those kept trials with equal weights
    ensemble: bool = False
    members: tuple[int, ...] = ()
    #: ship the trial's own weights even where the search trained its configuration again on train+val (an
    #: ensemble's members: the ensemble was selected and scored with them)
    own_weights: bool = False


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
    if options.ensemble or options.members:
        return export_ensemble(run, options, say)
    choice = choose_trial(study, number=options.trial, within=options.within)
    if choice.ensemble is not None and options.refit and options.within is None:  # one configuration to train again
        say(f"--refit trains one configuration again: exporting trial {choice.trial.number}, the best single trial, "
            f"not the ensemble the search ships")
        choice = replace(choice, ensemble=None, reason="the best single trial (--refit; the search ships an ensemble)")
    if choice.ensemble is not None:  # the search ships the recorded ensemble, or --within picked it
        say(f"Exporting the ensemble of trials {', '.join(choice.ensemble['members'])}: {choice.reason}")
        return export_ensemble(run, options, say, chosen_by=choice.reason)
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
    stored, stored_record = (None, {}) if options.refit or options.own_weights else recorded_refit(
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
    if options.members and not options.ensemble:
        raise UsageError("--members names an ensemble's trials: add --ensemble")
    if options.ensemble:
        for given, name in ((options.trial is not None, "--trial"), (options.within is not None, "--within"),
                            (options.refit, "--refit")):
            if given:
                raise UsageError(f"--ensemble exports the search's ensemble (or --members A,B,...), and {name} chooses "
                                 "or trains one trial: give one of them")
        if options.members and len(set(options.members)) < 2:
            raise UsageError("--members needs at least two different trials, e.g. --members 3,7,9")
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


# -- an ensemble's bundle ----------------------------------------------------------------------------------------

def export_ensemble(run: Run, options: ExportOptions, say: Callable[[str], None] = lambda message: None,
                    chosen_by: str | None = None) -> ExportResult:
    """Write the search's recorded ensemble (or the ensemble of ``options.members`` with equal weights) as one bundle:
    each member a whole bundle of its own under ``members/<trial>/`` (written and checked as ``autotl export
    --trial N`` writes it, with the formats asked for), the ensemble's config.json (format version 3) naming them
    and their weights, its card. Loaded back as ``autotl predict`` loads it, the bundle must reproduce the
    ensemble's recorded validation and test scores, and with ``--format onnx`` its members' ONNX files together
    the PyTorch ensemble's probabilities."""
    out = _check_options(options)
    task = run.task
    data, missing = run.load_data(options.data, needed_for="--members" if options.members else
                                  "--format" if options.formats else None)
    device = resolve_device(options.device)
    ensemble, chosen_by = _the_ensemble(run, options, data, device, chosen_by)
    weights = {int(n): float(w) for n, w in ensemble["members"].items()}
    say(f"Exporting an ensemble of {len(weights)} trials ({', '.join(f'{n}: weight {w:.2f}' for n, w in weights.items())}): "
        f"{chosen_by}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        members, folders = [], {}
        for number in weights:
            folders[number] = f"members/{number:04d}"
            member = export_bundle(run, ExportOptions(out=tmp / folders[number], trial=number, formats=options.formats,
                                                      data=options.data, weights=options.weights,
                                                      device=options.device, own_weights=True),
                                   say=lambda message, n=number: None if message.startswith("Bundle written to")
                                   else say(f"  member trial {n}: {message}")).config
            members.append(member)
        config = _ensemble_config(run, ensemble, chosen_by, members, folders, weights, tmp,
                                  f"{missing}: the bundle's scores were not re-checked" if missing else "")
        _record_files(config, tmp)
        config.write(tmp)
        bundle = load(tmp, device=device, registry=run.registry)  # the round trip `autotl predict` makes
        if data is not None:
            splits = [task.prepare(data, run.backbone(m.backbone.name), m.trial.params) for m in members]
            _verify_ensemble(config, bundle, splits, ensemble, say)
            if "onnx" in options.formats:
                config.formats["onnx"] = _onnx_ensemble_parity(tmp, bundle, [s.val for s in splits], run, say)
        config.write(tmp)
        (tmp / CARD).write_text(model_card(config), encoding="utf-8")
        _share(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"Bundle written to {out}")
    return ExportResult(out, config)


def _the_ensemble(run: Run, options: ExportOptions, data: LoadedData | None, device: torch.device,
                  chosen_by: str | None) -> tuple[dict[str, Any], str]:
    """The ensemble to export, as the study records one, and how its members were chosen, in words."""
    from .after_search import ensemble_candidates
    from .ensemble import ensemble_record

    if options.members:
        trials = sorted((run.trial(n) for n in dict.fromkeys(options.members)), key=lambda t: rank_key(t, _sign(run)))
        for t in trials:
            if t.state != TrialState.COMPLETE:
                raise RunError(f"trial {t.number} is {t.state.name.lower()}, not complete; --members names completed "
                               "trials with kept weights (`autotl trials` lists them)")
        candidates, labels, excluded = ensemble_candidates([(t, run.weights(t)) for t in trials], run.task, run.target,
                                                           data, run.backbone, device)
        if excluded:
            number, why = next(iter(excluded.items()))
            raise RunError(f"trial {number} cannot join the ensemble: {why}; leave it out of --members")
        ensemble = ensemble_record(candidates, labels[0], labels[1], run.target, run.metric, run.direction,
                                   weights={t.number: 1.0 for t in trials})
        best = run.best_trial()
        ensemble["best_single"] = {"trial": best.number, "val": best.value, "test": run.test_score(best)}
        ensemble["val_note"] = ("named, not selected: the members' own validation scores ranked them among the "
                                "search's trials, and the equal weights were not fitted; the test split chose nothing")
        return ensemble, f"named with --members {','.join(str(t.number) for t in trials)}, equal weights"
    ensemble = run.record.ensemble
    if not ensemble:
        raise RunError("the search recorded no ensemble (a search before autotl selected ensembles, one with "
                       "--ensemble-rounds 0, or one with fewer than two kept trials); name kept trials with "
                       "--members 3,7,9 to export them as an ensemble with equal weights")
    if len(ensemble.get("members") or {}) < 2:
        only = next(iter(ensemble.get("members") or {"?": 1}))
        raise RunError(f"the search's ensemble is trial {only} alone (no combination of the kept trials beat it on "
                       f"validation): export it without --ensemble, or name kept trials with --members 3,7,9")
    return ensemble, chosen_by or (f"greedy ensemble selection ({ensemble.get('kept_round')} of "
                                   f"{ensemble.get('rounds')} rounds) on the validation outputs of the "
                                   f"{len(ensemble.get('candidates') or [])} kept trials")


def _sign(run: Run) -> float:
    return -1.0 if run.direction == "minimize" else 1.0


def _ensemble_config(run: Run, ensemble: Mapping[str, Any], chosen_by: str, members: list[BundleConfig],
                     folders: Mapping[int, str], weights: Mapping[int, float], tmp: Path, data_note: str) -> BundleConfig:
    """The ensemble's config.json as export first writes it (the checks are filled in as they are known)."""
    from .bundle_config import FORMAT_VERSION, EnsembleInfo, EnsembleMember
    from .ensemble import SELECTION_NOTE, summed_latency

    record, location, recipe = run.record, run.location, run.record.recipe or {}
    parts = [EnsembleMember(trial=m.trial.number, folder=folders[m.trial.number], weight=weights[m.trial.number],
                            model=m.backbone.name, val=m.scores.val,
                            latency_ms=(m.cost.latency_at_search or {}).get("batch1_ms")) for m in members]
    counts = [m.cost.parameters for m in members]
    test = ensemble.get("test")
    return BundleConfig(
        format_version=FORMAT_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        task=record.task,
        label_names=list(record.label_names),
        backbone=None,
        target=TargetInfo(metric=run.metric, direction=run.direction, width=run.width,
                          per_position=bool(run.target.per_position), calibration=dict(ensemble.get("calibration") or {})),
        scores=Scores(metric=run.metric, val=ensemble.get("val"), test=test,
                      test_from="search" if test is not None else None,
                      val_metrics=dict(ensemble.get("val_metrics") or {}),
                      test_metrics=dict(ensemble.get("test_metrics") or {})),
        cost=Cost(parameters=None if None in counts else sum(counts), latency_at_search=ensemble.get("latency"),
                  latency_at_export=summed_latency([m.cost.latency_at_export for m in members])),
        search=SearchInfo(location=location.describe(), study=location.study_name,
                          storage=redact(location.storage_url), created=record.created,
                          trials=_trial_states(run.study), models=record.models or None, space=recipe.get("space"),
                          fixed=recipe.get("fixed"), sampler=(recipe.get("sampler") or {}).get("name", "tpe"),
                          pruner=(recipe.get("pruner") or {}).get("name", "median"), seed=record.seed,
                          recipe_source=record.recipe_source),
        data=DataInfo(path=record.data, fingerprint=record.fingerprint,
                      val_fraction=(recipe.get("data") or {}).get("val_fraction"), note=data_note,
                      sizes=members[0].data.sizes, val_from_train=members[0].data.val_from_train),
        weights=WeightsInfo(file="members/*/" + WEIGHTS, bytes=sum(m.weights.bytes or 0 for m in members)),
        ensemble=EnsembleInfo(members=parts, chosen_by=chosen_by, selected_on=ensemble.get("selected_on", "validation"),
                              val_note=ensemble.get("val_note") or SELECTION_NOTE, best_single=dict(ensemble.get("best_single") or {})),
        versions=library_versions(),
    )


def _verify_ensemble(config: BundleConfig, bundle: Bundle, splits: list, ensemble: Mapping[str, Any], say) -> None:
    """Score the loaded ensemble on the search's splits (each member on its own preparation of them) with its
    calibration: its validation (and recorded test) score must be the one recorded."""
    checks, metric, calibration = config.verification, config.target.metric, bundle.calibration
    for name, part in (("val", "val"), ("test", "test")):
        if any(getattr(s, part) is None or not len(getattr(s, part)) for s in splits):
            continue
        parts = [getattr(s, part) for s in splits]
        metrics = bundle.target.score(bundle.outputs(parts), parts[0].labels, calibration)
        value, recorded = metrics[metric], ensemble.get(name)
        checks[f"{name}_{metric}"] = ScoreCheck(recorded=recorded, bundle=value,
                                                equal=None if recorded is None else value == recorded)
        if recorded is not None and value != recorded:
            say(f"Warning: the ensemble's bundle scores {value:.6f} ({metric}) on the {name} split, the search "
                f"recorded {recorded:.6f}")
        if name == "test" and config.scores.test is None:
            config.scores.test, config.scores.test_from, config.scores.test_metrics = value, "export", metrics


def _onnx_ensemble_parity(folder: Path, bundle: Bundle, vals: list[TensorSplit], run: Run, say) -> dict[str, Any]:
    """The members' ONNX files run together (``autotl.load(BUNDLE, engine="onnx")``) against the PyTorch ensemble on
    real validation inputs: the largest difference of the combined probabilities, refused above the tolerance."""
    from .formats import PARITY_ITEMS, TOLERANCE

    onnx = load(folder, device="cpu", engine="onnx", registry=run.registry)
    cpu = bundle if bundle.device.type == "cpu" else load(folder, device="cpu", registry=run.registry)
    items = torch.arange(min(PARITY_ITEMS, len(vals[0])))
    parts = [v.take(items) for v in vals]
    reference = cpu.target.probabilities(cpu.outputs(parts))
    probs = onnx.target.probabilities(onnx.outputs(parts))
    diff = float((probs - reference).abs().max())
    if not diff <= TOLERANCE:
        raise BundleError(f"the members' ONNX files together differ from the PyTorch ensemble by up to {diff:.2e} in "
                          f"probability on real inputs (tolerance {TOLERANCE:.0e}); the bundle was not written")
    say(f"onnx ensemble: max abs difference of combined probabilities {diff:.2e} on {len(items)} validation inputs")
    return {"files": [f"{m.folder}/{(m_config.formats.get('onnx') or {}).get('file')}" for m, m_config in
                      zip(bundle.config.ensemble.members, (b.config for b in bundle.members))],
            "parity": {"max_abs_diff_probability": diff, "tolerance": TOLERANCE, "items": len(items),
                       "on": "the members' ONNX files combined, against the PyTorch ensemble"}}


def scored(bundle: Bundle, split: TensorSplit) -> dict[str, float]:
    """Every metric of the bundle's target on ``split`` (``nan`` for an empty one), with the bundle's calibration."""
    if not len(split):
        return {name: float("nan") for name in bundle.target.metrics}
    return bundle.target.score(bundle.outputs(split), split.labels, bundle.calibration)


__all__ = ["ExportOptions", "ExportResult", "export_bundle", "export_ensemble", "scored"]
