"""``autotl export``: from a trial of a search to a self-describing bundle (see :mod:`autotl.bundle`).

The chosen trial's saved weights (already LoRA-merged by the search) are copied as safetensors, or,
with ``refit``, its configuration is trained again on train+val for the epochs of its best epoch.
The bundle is written to a temporary folder beside ``--out``, loaded back through the same loader
``autotl predict`` uses, checked (validation accuracy against the recorded one, optional ONNX and
TorchScript files against the PyTorch network: autotl/formats.py), and only then moved into place.
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

from .base import Backbone, LoadedData, Task, TensorSplit
from .bundle import Bundle, load, sha256_file
from .bundle_config import (CARD, CONFIG, FORMAT, WEIGHTS, BackboneInfo, BundleConfig, Cost, DataInfo, RefitInfo,
                            ScoreCheck, Scores, SearchInfo, TrialInfo, WeightsInfo, library_versions)
from .card import model_card
from .device import resolve_device
from .errors import BundleError, DataError, PluginError, RunError, UsageError
from .files import load_weights, save_weights
from .formats import FORMATS, export_format
from .latency import count_parameters, measure_model, sample_inputs
from .leaderboard import choose_trial, rank_key
from .recipes import parse_recipe
from .runs import RunLocation, load_study, redact
from .trial_weights import WEIGHTS_ATTR, owner_problem, recorded_weights


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


def export_bundle(location: RunLocation, options: ExportOptions,
                  say: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Write the bundle of one trial of the study at ``location`` to ``options.out``."""
    if options.trial is not None and options.within is not None:
        raise UsageError("--trial and --within both choose the trial: give one of them")
    unknown = sorted(set(options.formats) - set(FORMATS))
    if unknown:
        raise UsageError(f"--format {', '.join(unknown)} is unknown; use {' or '.join(FORMATS)}")
    out = Path(options.out)
    _check_out(out, options.force)
    study = load_study(location)
    attrs = study.user_attrs
    choice = choose_trial(study, number=options.trial, within=options.within)
    trial = choice.trial
    params = dict(trial.user_attrs.get("config") or trial.params)
    say(f"Exporting trial {trial.number} ({params.get('model')}): {choice.reason}")

    from .plugins import get_registry

    registry = get_registry()
    task_name = attrs.get("task")
    task = registry.tasks.get(task_name)
    if task is None:
        raise PluginError(f"the study is a {task_name!r} search, but no installed plugin provides that task")
    family = next((f for f in registry.families_for(task) if f.owns(params["model"])), None)
    if family is None:
        raise PluginError(f"no installed backbone family serving {task_name!r} knows model {params['model']!r}")
    weight_files = {**(attrs.get("weights_files") or {}), **options.weights}
    # the saved trial weights replace every pretrained one: without --refit only the architecture is needed
    get_backbone = family.get if options.refit else family.architecture
    backbone = get_backbone(params["model"], weight_files.get(params["model"]))
    recipe = parse_recipe(attrs.get("recipe") or {"task": task_name, "fixed": {"lr": 0}}, attrs.get("recipe_source", "?"))
    data, data_note = _load_data(task, attrs, recipe, options.data, needed_for="--refit" if options.refit else
                                 "--format" if options.formats else None)
    device = resolve_device(options.device)
    num_classes = len(attrs["label_names"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        refit_info = None
        if options.refit:
            state, refit_info = _refit(task, data, backbone, params, trial, int(attrs.get("seed", 0)), device,
                                       num_classes, say)
        else:
            state = load_weights(_trial_weights(location, attrs, trial, study.study_name))
        _check_merged(state)
        save_weights(tmp / WEIGHTS, state, {"format": FORMAT, "model": params["model"], "trial": str(trial.number)})
        backbone_config = backbone.bundle_files(tmp)
        settings = task.export_settings(recipe.data, backbone, params)
        config = _config(study, attrs, trial, choice.reason, params, backbone, backbone_config, settings, tmp,
                         refit_info, location, data_note)
        config.write(tmp)

        bundle = load(tmp, device=device)  # the round trip `autotl predict` makes
        config.cost.parameters = count_parameters(bundle.model)
        if data is not None:
            prepared = task.prepare(data, backbone, params)
            config.data.val_from_train = (data.report or {}).get("val_from_train")
            _verify_scores(config, bundle, prepared, attrs, trial, options.refit, say)
            val = prepared.val
            config.cost.latency_at_export = measure_model(bundle.model, sample_inputs(val), device,
                                                          channels_last=backbone.channels_last)
            if options.formats:
                cpu_bundle = bundle if device.type == "cpu" else load(tmp, device="cpu")
                for fmt in options.formats:
                    config.formats[fmt] = export_format(fmt, cpu_bundle.model, val, tmp, say,
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


def find_trial_weights(location: RunLocation, attrs: Mapping[str, Any], trial: FrozenTrial) -> Path | None:
    """The saved weights ``trial`` recorded: in the run folder given, else where the search wrote them.

    Check them with :func:`autotl.trial_weights.owner_problem` before use."""
    return recorded_weights(trial, [location.folder, attrs.get("out")])


def _trial_weights(location: RunLocation, attrs: Mapping[str, Any], trial: FrozenTrial, study_name: str) -> Path:
    found = find_trial_weights(location, attrs, trial)
    if found is not None:
        problem = owner_problem(found, study_name, trial.number)
        if problem:
            raise RunError(f"{problem}; add --refit to train trial {trial.number}'s configuration again")
        return found
    rel = trial.user_attrs.get(WEIGHTS_ATTR)
    if not rel:
        raise RunError(f"the weights of trial {trial.number} were not kept (only the top --keep-top trials keep "
                       "theirs); add --refit to train its configuration again")
    roots = [r for r in (location.folder, attrs.get("out")) if r]
    where = " or ".join(str(Path(r) / rel) for r in roots) or rel
    raise RunError(f"the weights of trial {trial.number} are not at {where} (only the top --keep-top trials keep "
                   "theirs; a moved run needs its folder named); add --refit to train its configuration again")


def _check_merged(state: Mapping[str, torch.Tensor]) -> None:
    unmerged = [k for k in state if "lora_" in k or ".base_layer." in k or k.startswith("base_model.")]
    if unmerged:
        raise BundleError(f"the weights hold unmerged LoRA adapters ({unmerged[0]}, ...); a bundle holds the plain "
                          "network with LoRA merged")


def _load_data(task: Task, attrs: Mapping[str, Any], recipe, data_path: Path | None,
               needed_for: str | None) -> tuple[LoadedData | None, str]:
    """The run's data, loaded as the search loaded it; ``None`` and why when it cannot be had."""
    path = Path(data_path or attrs.get("data") or "")
    if not str(path) or not path.exists():
        note = f"the run's data ({path}) is not there"
        if needed_for:
            raise DataError(f"{needed_for} needs the run's data, and {path} does not exist; give --data PATH")
        return None, note + ": the bundle's scores were not re-checked"
    data = task.load(path, seed=int(attrs.get("seed", 0)), val_fraction=recipe.val_fraction, options=recipe.data)
    if attrs.get("fingerprint") and data.fingerprint != attrs["fingerprint"]:
        if needed_for:
            raise RunError(f"the data in {path} changed since the search (fingerprint {attrs['fingerprint']} -> "
                           f"{data.fingerprint}); {needed_for} needs the search's data: give --data PATH")
        return None, f"the data in {path} changed since the search: the bundle's scores were not re-checked"
    return data, ""


def _refit(task: Task, data: LoadedData, backbone: Backbone, params: Mapping[str, Any], trial: FrozenTrial,
           seed: int, device: torch.device, num_classes: int, say) -> tuple[dict, dict]:
    from .adapt import merged
    from .training import train

    epochs = int(trial.user_attrs.get("best_epoch") or params["epochs"])
    splits = task.prepare_refit(data, backbone, params)
    say(f"Refitting trial {trial.number}'s configuration on train+val ({len(splits.train)} samples, {epochs} "
        f"epoch(s), the trial's best epoch) ...")
    started = time.time()
    result = train(backbone, dict(params, epochs=epochs), splits.train, splits.val, num_classes, device=device,
                   seed=seed + trial.number)
    model = merged(result.adapted.model)  # the last epoch's weights: no held-out split chose an epoch
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    info = {"on": "train+val", "samples": len(splits.train), "epochs": epochs, "seed": seed + trial.number,
            "duration_s": round(time.time() - started, 1),
            "note": "trained again on the training and validation splits together, for the trial's best number of "
                    "epochs, keeping the last epoch; no held-out split remains to validate it"}
    return state, info


# -- what the bundle says about itself -------------------------------------------------------------

def _config(study: optuna.Study, attrs: Mapping[str, Any], trial: FrozenTrial, reason: str,
            params: Mapping[str, Any], backbone: Backbone, backbone_config: dict, settings: dict, tmp: Path,
            refit: dict | None, location: RunLocation, data_note: str) -> BundleConfig:
    """The bundle's config as export first writes it: scores, cost and checks are filled in as they are known."""
    recipe = attrs.get("recipe") or {}
    test = (attrs.get("test_scores") or {}).get(str(trial.number))
    weights = tmp / WEIGHTS
    return BundleConfig(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        task=attrs["task"],
        label_names=list(attrs["label_names"]),
        backbone=BackboneInfo(family=backbone.family, name=params["model"], modality=backbone.modality,
                              description=backbone.describe(), config=backbone_config),
        preprocessing=settings,
        trial=TrialInfo(number=trial.number, chosen_by=reason, rank_by_val_accuracy=_rank(study, trial),
                        params=dict(params), best_epoch=trial.user_attrs.get("best_epoch"),
                        val_curve=trial.user_attrs.get("val_curve")),
        scores=Scores(val_accuracy=trial.value, test_accuracy=None if refit else test,
                      test_accuracy_from="search" if test is not None and not refit else None),
        refit=RefitInfo(**refit) if refit else None,
        cost=Cost(latency_at_search=trial.user_attrs.get("latency")),
        search=SearchInfo(location=location.describe(), study=location.study_name,
                          storage=redact(location.storage_url), created=attrs.get("created"),
                          trials=_trial_states(study), models=attrs.get("models"), space=recipe.get("space"),
                          fixed=recipe.get("fixed"), sampler=(recipe.get("sampler") or {}).get("name", "tpe"),
                          pruner=(recipe.get("pruner") or {}).get("name", "median"), seed=attrs.get("seed"),
                          recipe_source=attrs.get("recipe_source")),
        data=DataInfo(path=attrs.get("data"), fingerprint=attrs.get("fingerprint"),
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


def _rank(study: optuna.Study, trial: FrozenTrial) -> int:
    """``trial``'s place among the study's complete trials by the leaderboard's order (1: the best)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return 1 + sum(rank_key(t) < rank_key(trial) for t in complete)


def _record_files(config: BundleConfig, folder: Path) -> None:
    """The sha256 of every file in ``folder`` but config.json and README.md, and of each format's file."""
    config.files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
                    if p.is_file() and p.relative_to(folder).as_posix() not in (CONFIG, CARD)}
    for info in config.formats.values():
        if info.get("file"):
            info["sha256"] = config.files[info["file"]]


def _verify_scores(config: BundleConfig, bundle: Bundle, prepared, attrs, trial: FrozenTrial, refit: bool,
                   say) -> None:
    """Score the loaded bundle on the search's splits; without --refit its val accuracy must be the recorded one."""
    config.data.sizes = {"train": len(prepared.train), "val": len(prepared.val),
                         "test": len(prepared.test) if prepared.test is not None else None}
    checks = config.verification
    if not refit:
        val = _accuracy(bundle, prepared.val)
        checks["val_accuracy"] = ScoreCheck(recorded=trial.value, bundle=val, equal=val == trial.value)
        if val != trial.value:
            say(f"Warning: the bundle scores {val:.6f} on the validation split, the trial recorded {trial.value:.6f}")
    if prepared.test is not None:
        test = _accuracy(bundle, prepared.test)
        recorded = None if refit else (attrs.get("test_scores") or {}).get(str(trial.number))
        checks["test_accuracy"] = ScoreCheck(recorded=recorded, bundle=test,
                                             equal=None if recorded is None else test == recorded)
        if config.scores.test_accuracy is None:
            config.scores.test_accuracy = test
            config.scores.test_accuracy_from = "export"


def _accuracy(bundle: Bundle, split: TensorSplit) -> float:
    logits = bundle.logits(split)
    return float((logits.argmax(-1) == split.labels).float().mean()) if len(split) else float("nan")


__all__ = ["ExportOptions", "ExportResult", "export_bundle", "find_trial_weights"]
