"""``autotl export``: from a trial of a search to a self-describing bundle (see :mod:`autotl.bundle`).

The chosen trial's saved weights (already LoRA-merged by the search) are copied as safetensors, or,
with ``refit``, its configuration is trained again on train+val for the epochs of its best epoch.
The bundle is written to a temporary folder beside ``--out``, loaded back through the same loader
``autotl predict`` uses, checked (validation accuracy against the recorded one, optional ONNX and
TorchScript files against the PyTorch network), and only then moved into place.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .base import Backbone, Inputs, LoadedData, Task, TensorSplit
from .bundle import (CARD, CONFIG, FORMAT, FORMAT_VERSION, ONNX, TORCHSCRIPT, WEIGHTS, Bundle, BundleError,
                     load, resolve_device, sha256_file)
from .errors import UsageError
from .files import load_weights, save_weights, write_json
from .latency import BATCH, CPU_THREADS, count_parameters, cpu_threads, first, measure_model, sample_inputs, time_call
from .leaderboard import choose_trial, rank_key
from .records import TrialRecord
from .run import Run
from .runs import RunLocation, load_study, redact
from .training import forward

FORMATS = ("onnx", "torchscript")
#: the largest absolute difference of any class probability the ONNX and TorchScript files may show
#: against the PyTorch network on real inputs.
TOLERANCE = 1e-4
#: real validation inputs the formats are checked on.
PARITY_ITEMS = 64
ONNX_OPSET = 18


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
    config: dict[str, Any]


def export_bundle(location: RunLocation | Run, options: ExportOptions,
                  say: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Write the bundle of one trial of the study at ``location`` (or of an open :class:`~autotl.run.Run`) to
    ``options.out``."""
    out = _check_options(options)
    run = location if isinstance(location, Run) else Run(location, load_study(location))
    location, study, record = run.location, run.study, run.record
    choice = choose_trial(study, number=options.trial, within=options.within)
    trial = choice.trial
    params = run.config(trial)
    say(f"Exporting trial {trial.number} ({params.get('model')}): {choice.reason}")
    # the saved trial weights replace every pretrained one: without --refit only the architecture is needed
    backbone = run.backbone(params["model"], pretrained=options.refit, weights=options.weights)
    task, recipe = run.task, run.recipe
    data, data_note = run.load_data(options.data, needed_for="--refit" if options.refit else
                                    "--format" if options.formats else None)
    device = resolve_device(options.device)
    num_classes = len(record.label_names)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        refit_info = None
        if options.refit:
            state, refit_info = _refit(task, data, backbone, params, trial, record.seed, device, num_classes, say)
        else:
            state = load_weights(run.weights(trial))
        _check_merged(state)
        save_weights(tmp / WEIGHTS, state, {"format": FORMAT, "model": params["model"], "trial": str(trial.number)})
        backbone_config = backbone.bundle_files(tmp)
        settings = task.export_settings(recipe.data, backbone, params)
        config = _config(study, study.user_attrs, trial, choice.reason, params, backbone, backbone_config, settings,
                         tmp, refit_info, location, data_note)
        write_json(tmp / CONFIG, config)

        bundle = load(tmp, device=device)  # the round trip `autotl predict` makes
        config["cost"]["parameters"] = count_parameters(bundle.model)
        if data is not None:
            prepared = task.prepare(data, backbone, params)
            config["data"]["val_from_train"] = (data.report or {}).get("val_from_train")
            _verify_scores(config, bundle, prepared, run.test_score(trial), trial, options.refit, say)
            val = prepared.val
            config["cost"]["latency_at_export"] = measure_model(bundle.model, sample_inputs(val), device,
                                                                channels_last=backbone.channels_last)
            if options.formats:
                cpu_bundle = bundle if device.type == "cpu" else load(tmp, device="cpu")
                for fmt in options.formats:
                    config["formats"][fmt] = _export_format(fmt, cpu_bundle, val, tmp, say)
        config["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*"))
                           if p.is_file() and p.relative_to(tmp).as_posix() not in (CONFIG, CARD)}
        for info in config["formats"].values():
            if info.get("file"):
                info["sha256"] = config["files"][info["file"]]
        write_json(tmp / CONFIG, config)
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


def _refit(task: Task, data: LoadedData, backbone: Backbone, params: Mapping[str, Any], trial: FrozenTrial,
           seed: int, device: torch.device, num_classes: int, say) -> tuple[dict, dict]:
    from .adapt import merged
    from .training import train

    epochs = int(TrialRecord.from_trial(trial).best_epoch or params["epochs"])
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
            refit: dict | None, location: RunLocation, data_note: str) -> dict[str, Any]:
    states = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    complete = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in states:
            states[t.state.name.lower()] += 1
        if t.state == TrialState.COMPLETE:
            complete.append(t)
    rank = 1 + sum(rank_key(t) < rank_key(trial) for t in complete)
    recipe = attrs.get("recipe") or {}
    test = (attrs.get("test_scores") or {}).get(str(trial.number))
    weights = tmp / WEIGHTS
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": attrs["task"],
        "label_names": list(attrs["label_names"]),
        "backbone": {"family": backbone.family, "name": params["model"], "modality": backbone.modality,
                     "description": backbone.describe(), "config": backbone_config},
        "preprocessing": settings,
        "trial": {
            "number": trial.number,
            "chosen_by": reason,
            "rank_by_val_accuracy": rank,
            "params": dict(params),
            "best_epoch": trial.user_attrs.get("best_epoch"),
            "val_curve": trial.user_attrs.get("val_curve"),
        },
        "scores": {
            "val_accuracy": trial.value,
            "test_accuracy": None if refit else test,
            "test_accuracy_from": "search" if test is not None and not refit else None,
        },
        "refit": refit,
        "cost": {"parameters": None, "latency_at_search": trial.user_attrs.get("latency"),
                 "latency_at_export": None},
        "search": {
            "location": location.describe(),
            "study": location.study_name,
            "storage": redact(location.storage_url),
            "created": attrs.get("created"),
            "trials": states,
            "models": attrs.get("models"),
            "space": recipe.get("space"),
            "fixed": recipe.get("fixed"),
            "sampler": (recipe.get("sampler") or {}).get("name", "tpe"),
            "pruner": (recipe.get("pruner") or {}).get("name", "median"),
            "seed": attrs.get("seed"),
            "recipe_source": attrs.get("recipe_source"),
        },
        "data": {"path": attrs.get("data"), "fingerprint": attrs.get("fingerprint"), "sizes": None,
                 "val_from_train": None, "val_fraction": (recipe.get("data") or {}).get("val_fraction"),
                 "note": data_note},
        "weights": {"file": WEIGHTS, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
                    "lora_rank": int(params.get("lora_rank", 0) or 0),
                    "lora_merged": True, "dtype": "float32"},
        "verification": {},
        "formats": {},
        "files": {},
        "versions": library_versions(),
    }


def _verify_scores(config: dict, bundle: Bundle, prepared, test_score: float | None, trial: FrozenTrial, refit: bool,
                   say) -> None:
    """Score the loaded bundle on the search's splits; without --refit its val accuracy must be the recorded one."""
    config["data"]["sizes"] = {"train": len(prepared.train), "val": len(prepared.val),
                               "test": len(prepared.test) if prepared.test is not None else None}
    checks = config["verification"]
    if not refit:
        val = _accuracy(bundle, prepared.val)
        checks["val_accuracy"] = {"recorded": trial.value, "bundle": val, "equal": val == trial.value}
        if val != trial.value:
            say(f"Warning: the bundle scores {val:.6f} on the validation split, the trial recorded {trial.value:.6f}")
    if prepared.test is not None:
        test = _accuracy(bundle, prepared.test)
        recorded = None if refit else test_score
        checks["test_accuracy"] = {"recorded": recorded, "bundle": test,
                                   "equal": None if recorded is None else test == recorded}
        if config["scores"]["test_accuracy"] is None:
            config["scores"]["test_accuracy"] = test
            config["scores"]["test_accuracy_from"] = "export"


def _accuracy(bundle: Bundle, split: TensorSplit) -> float:
    logits = bundle.logits(split)
    return float((logits.argmax(-1) == split.labels).float().mean()) if len(split) else float("nan")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["autotl", "torch", "safetensors", "peft", "optuna", "numpy", "timm", "torchvision", "transformers",
             "tokenizers", "pillow", "onnx", "onnxruntime", "onnxscript"]
    modules = {"pillow": "PIL"}
    found = {"python": platform.python_version()}
    for name in names:
        if name not in ("autotl", "torch", "safetensors") and modules.get(name, name) not in sys.modules:
            continue  # only what this process used
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# -- ONNX and TorchScript --------------------------------------------------------------------------

def onnx_feed(inputs: Inputs) -> dict[str, Any]:
    """A batch of model inputs as onnxruntime takes them."""
    if isinstance(inputs, torch.Tensor):
        return {"input": inputs.detach().cpu().contiguous().numpy()}
    return {k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}


def onnx_session_options(ort, threads: int = 0):
    """Session options: ``threads`` intra-op threads (0: onnxruntime's default), and no spinning, so that
    idle onnxruntime threads do not take the CPU from everything else between calls."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _export_format(fmt: str, bundle: Bundle, val: TensorSplit, folder: Path, say) -> dict[str, Any]:
    model = bundle.model
    real, _ = next(iter(val.batches(PARITY_ITEMS)))
    with torch.inference_mode():
        reference = torch.softmax(forward(model, _cpu(real)).float(), -1)
    if fmt == "onnx":
        info, run = _export_onnx(model, real, folder / ONNX)
    else:
        info, run = _export_torchscript(model, real, folder / TORCHSCRIPT)
        if run is None:
            say(f"TorchScript: not written ({info['skipped']})")
            return info
    probs = torch.softmax(run(real).float(), -1)
    single = torch.softmax(run(first(real, 1)).float(), -1)
    diff = max(float((probs - reference).abs().max()), float((single - reference[:1]).abs().max()))
    agree = int((probs.argmax(-1) == reference.argmax(-1)).sum())
    info["parity"] = {"max_abs_diff_probability": diff, "tolerance": TOLERANCE, "items": len(reference),
                      "top1_agreement": f"{agree}/{len(reference)}",
                      "on": "real validation inputs of the run, batched and one at a time"}
    if not diff <= TOLERANCE:
        raise BundleError(f"the {fmt} model differs from the PyTorch network by up to {diff:.2e} in probability on "
                          f"real inputs (tolerance {TOLERANCE:.0e}); the bundle was not written")
    sample = sample_inputs(val)
    torch_latency = measure_model(model, sample, torch.device("cpu"), channels_last=bundle.backbone.channels_last)
    with cpu_threads() as threads:
        info["latency"] = {
            "batch1_ms": round(time_call(lambda: run(first(sample, 1))) * 1000.0, 4),
            "batched_ms": round(time_call(lambda: run(sample), warmup=1) * 1000.0 / BATCH, 4),
            "batch_size": BATCH, "device": torch_latency["device"], "threads": threads, "engine": info["engine"],
        }
    info["pytorch_latency"] = torch_latency
    say(f"{fmt}: max abs difference of probabilities {diff:.2e} on {len(reference)} validation inputs "
        f"(tolerance {TOLERANCE:.0e}); per-item latency at batch 1: {info['engine']} "
        f"{info['latency']['batch1_ms']:.2f} ms, PyTorch {torch_latency['batch1_ms']:.2f} ms")
    return info


def _cpu(inputs: Inputs) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.cpu()
    return {k: v.cpu() for k, v in inputs.items()}


def _export_onnx(model: torch.nn.Module, example: Inputs, path: Path):
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        raise UsageError("--format onnx needs onnx and onnxruntime: pip install 'autotl[onnx]'") from exc
    model = _plain_copy(model)
    if isinstance(example, torch.Tensor):
        args, kwargs, names = (example[:2].contiguous(),), None, ["input"]
        batch = torch.export.Dim("batch")
        shapes: Any = ({0: batch},)
        axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    else:
        kwargs = {k: v[:2].contiguous() for k, v in example.items()}
        args, names = (), list(kwargs)
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        shapes = {k: ({0: batch, 1: length} if v.dim() == 2 else {0: batch}) for k, v in kwargs.items()}
        axes = {**{k: ({0: "batch", 1: "length"} if v.dim() == 2 else {0: "batch"}) for k, v in kwargs.items()},
                "logits": {0: "batch"}}
    errors = []
    exporter = None
    for dynamo in (True, False):
        try:
            with _quiet():
                if dynamo:
                    torch.onnx.export(model, args, str(path), kwargs=kwargs, input_names=names,
                                      output_names=["logits"], dynamic_shapes=shapes, dynamo=True,
                                      external_data=False, opset_version=ONNX_OPSET)
                else:
                    torch.onnx.export(model, args, str(path), kwargs=kwargs, input_names=names,
                                      output_names=["logits"], dynamic_axes=axes, dynamo=False,
                                      opset_version=ONNX_OPSET)
            exporter = "torch.onnx (dynamo)" if dynamo else "torch.onnx (TorchScript-based)"
            break
        except Exception as exc:
            errors.append(f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
            path.unlink(missing_ok=True)
    if exporter is None:
        raise BundleError(f"ONNX export failed: {errors[-1]}")
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    session = ort.InferenceSession(str(path), onnx_session_options(ort, threads=CPU_THREADS),
                                   providers=["CPUExecutionProvider"])

    def run(inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(session.run(None, onnx_feed(inputs))[0])

    info = {"file": ONNX, "engine": f"onnxruntime {ort.__version__}", "exporter": exporter, "opset": ONNX_OPSET,
            "inputs": names, "output": "logits", "dynamic_axes": {k: v for k, v in axes.items()},
            "note": "takes the preprocessed tensors (see preprocessing), returns logits; softmax gives probabilities"}
    return info, run


def _export_torchscript(model: torch.nn.Module, example: Inputs, path: Path):
    model = _plain_copy(model)
    try:
        with _quiet(), torch.no_grad():
            if isinstance(example, torch.Tensor):
                traced = torch.jit.trace(model, (example[:2].contiguous(),), check_trace=False)
            else:
                traced = torch.jit.trace(model, example_kwarg_inputs={k: v[:2] for k, v in example.items()},
                                         check_trace=False)
            traced.save(str(path))
    except Exception as exc:
        path.unlink(missing_ok=True)
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        return {"skipped": f"tracing failed: {message}"}, None

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return traced(_cpu(inputs)) if isinstance(inputs, torch.Tensor) else traced(**_cpu(inputs))

    info = {"file": TORCHSCRIPT, "engine": f"TorchScript (torch {torch.__version__})", "exporter": "torch.jit.trace",
            "note": "traced: takes the preprocessed tensors, returns logits; torch.jit.load runs code, so load "
                    "it only from a bundle you trust (autotl itself never loads it)"}
    return info, run


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()


@contextlib.contextmanager
def _quiet():
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        import logging

        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


# -- the model card ------------------------------------------------------------------------------

def model_card(config: Mapping[str, Any]) -> str:
    """README.md of a bundle: for a person deciding whether and how to use the model."""
    c = config
    trial, scores, search, data = c["trial"], c["scores"], c["search"], c["data"]
    params = trial["params"]
    labels = c["label_names"]
    refit = c.get("refit")
    lines = [f"# {params.get('model')} for {c['task']} ({len(labels)} classes)", ""]
    lines += [f"An autotl bundle: trial {trial['number']} of an automated transfer-learning search, "
              f"{'refit on train+val, ' if refit else ''}exported {c['created']}.", ""]
    lines += ["## Scores", ""]
    lines += ["| split | accuracy | |", "|---|---|---|"]
    sizes = data.get("sizes") or {}
    checks = c.get("verification") or {}
    val_note = ("chose the trial among the search's trials, so slightly optimistic")
    if refit:
        val_note = "of the trial before the refit; the refit model trained on this split, so it has no validation score"
    elif checks.get("val_accuracy", {}).get("equal"):
        val_note += "; the bundle reproduces it exactly"
    lines.append(f"| validation{_n(sizes.get('val'))} | {_acc(scores['val_accuracy'])} | {val_note} |")
    if scores.get("test_accuracy") is not None:
        origin = {"search": "scored by the search once it had chosen its best trial",
                  "export": "scored at export, once the trial was chosen"}.get(scores.get("test_accuracy_from"), "")
        lines.append(f"| test{_n(sizes.get('test'))} | {_acc(scores['test_accuracy'])} | never used to choose; "
                     f"{origin} |")
    else:
        lines.append("| test | not scored | the data had no test split, or it was not available at export |")
    lines += ["", f"Classes, in the order of the model's outputs: {', '.join(f'`{x}`' for x in labels)}.", ""]

    lines += ["## Trained on", ""]
    lines.append(f"- Data: `{data.get('path')}` (fingerprint `{data.get('fingerprint')}`).")
    if sizes:
        lines.append(f"- Samples: {sizes.get('train')} train, {sizes.get('val')} validation"
                     + (f", {sizes.get('test')} test" if sizes.get("test") else "") + ".")
    if data.get("val_from_train") and data.get("val_fraction") is not None:
        lines.append(f"- Without a validation split of its own, {data['val_fraction']:g} of each class of the "
                     "training data is held out for validation (stratified, seeded).")
    if data.get("note"):
        lines.append(f"- Note: {data['note']}.")
    lines.append(f"- Source model: {c['backbone']['description']}, adapted with "
                 + _adaptation(params) + ".")
    if refit:
        lines.append(f"- Refit: {refit['note']} ({refit['samples']} samples, {refit['epochs']} epoch(s)).")
    lines.append("")

    lines += ["## The search that chose it", ""]
    t = search["trials"]
    lines.append(f"- {sum(t.values())} trials ({t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
                 f"{t.get('fail', 0)} failed), {search['sampler']} sampler, "
                 f"{'no' if search['pruner'] == 'none' else search['pruner']} pruner, seed "
                 f"{search.get('seed')}; {search['location']}.")
    lines.append(f"- Chosen by: {trial['chosen_by']}; rank {trial['rank_by_val_accuracy']} by validation accuracy.")
    models = search.get("models") or {}
    if models:
        lines.append(f"- Models searched: {', '.join(f'`{m}`' for m in models)}.")
    space = search.get("space") or {}
    if space:
        lines.append("- Searched: " + "; ".join(f"`{k}` {_spec(v)}" for k, v in space.items()) + ".")
    fixed = search.get("fixed") or {}
    if fixed:
        lines.append("- Fixed: " + ", ".join(f"`{k}`={v}" for k, v in fixed.items()) + ".")
    lines.append("- This trial: " + ", ".join(f"`{k}`={_value(v)}" for k, v in params.items()) + ".")
    if trial.get("best_epoch"):
        lines.append(f"- Best epoch: {trial['best_epoch']} of {params.get('epochs')} (validation curve "
                     f"{trial.get('val_curve')}).")
    lines.append("")

    lines += ["## Size and speed", ""]
    cost = c.get("cost") or {}
    if cost.get("parameters"):
        lines.append(f"- Parameters: {cost['parameters']:,} (LoRA merged: the plain network).")
    for label, latency in (("at the search", cost.get("latency_at_search")),
                           ("at export", cost.get("latency_at_export"))):
        if latency:
            lines.append(f"- Latency {label}: {latency['batch1_ms']:.2f} ms per item at batch 1, "
                         f"{latency['batched_ms']:.2f} ms per item at batch {latency['batch_size']} "
                         f"({latency['engine']}, {latency['device']}{_threads(latency)}; median of a few "
                         "warm runs, model only, preprocessing excluded).")
    for fmt, info in (c.get("formats") or {}).items():
        if "skipped" in info:
            lines.append(f"- {fmt}: not written ({info['skipped']}).")
            continue
        parity, latency = info["parity"], info["latency"]
        lines.append(f"- `{info['file']}` ({info['exporter']}): probabilities within {parity['max_abs_diff_probability']:.1e} "
                     f"of the PyTorch network on {parity['items']} real validation inputs (tolerance "
                     f"{parity['tolerance']:.0e}; top-1 agreement {parity['top1_agreement']}); {latency['batch1_ms']:.2f} "
                     f"ms per item at batch 1, {latency['batched_ms']:.2f} at batch {latency['batch_size']} on "
                     f"{info['engine']}.")
    lines.append("")

    lines += ["## Use", ""]
    lines += ["```", "autotl predict BUNDLE INPUT...            # label and probability per input",
              "autotl predict BUNDLE INPUT... --top-k 3 --json", "```", "", "```python", "import autotl",
              "model = autotl.load(\"BUNDLE\")", "for p in model.predict([...]):", "    print(p.input, p.label, p.probability)",
              "```", ""]
    lines.append("Inputs are preprocessed exactly as in the search: "
                 + "; ".join(f"{k}: {_value(v)}" for k, v in (c.get("preprocessing") or {}).items()) + ".")
    lines.append("")

    lines += ["## Intended use and limits", ""]
    lines += [
        f"- Intended for inputs like the training data: the {len(labels)} classes above, as they appear in "
        f"`{data.get('path')}`. Every input gets one of these labels: the model has no \"none of these\"; a low "
        "probability is a hint, not a guarantee, that an input is out of scope.",
        "- The scores come from small held-out splits of the same data; expect lower accuracy on data gathered "
        "differently (other cameras, sources, populations, time).",
        "- Check it on your own labelled samples before relying on it, and keep a person in the loop for "
        "decisions that matter. It has not been audited for bias or fairness.",
        "- Latencies were measured on the machine named above; measure on yours.",
        "",
        "## Files",
        "",
        f"- `{CONFIG}`: everything above as JSON, with the library versions.",
    ]
    for name, digest in (c.get("files") or {}).items():
        lines.append(f"- `{name}`: sha256 `{digest}`" + (" (checked on every load)" if name == WEIGHTS else ""))
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in (c.get("versions") or {}).items()) + ".")
    return "\n".join(lines) + "\n"


def _threads(latency: Mapping[str, Any]) -> str:
    n = latency.get("threads")
    return "" if not n else f", {n} thread" + ("s" if n > 1 else "")


def _acc(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _n(n: int | None) -> str:
    return f" ({n})" if n else ""


def _adaptation(params: Mapping[str, Any]) -> str:
    freeze = int(params.get("freeze", 0) or 0)
    rank = int(params.get("lora_rank", 0) or 0)
    parts = ["full fine-tuning" if freeze == 0 else f"the first {freeze} layer group(s) frozen"]
    if rank:
        parts.append(f"LoRA rank {rank} on the rest (merged into the weights)")
    parts.append(f"lr {params.get('lr'):.2g}" if isinstance(params.get("lr"), float) else f"lr {params.get('lr')}")
    parts.append(f"{params.get('epochs')} epochs")
    return ", ".join(parts)


def _spec(spec: Any) -> str:
    if isinstance(spec, Mapping):
        if "choices" in spec:
            return "in {" + ", ".join(str(x) for x in spec["choices"]) + "}"
        low, high = spec.get("low"), spec.get("high")
        return f"{'from ' + str(low) if low is not None else ''}{' to ' + str(high) if high is not None else ' up'}" \
               + (" (log)" if spec.get("log") else "")
    return str(spec)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


__all__ = ["ExportOptions", "ExportResult", "FORMATS", "TOLERANCE", "export_bundle", "model_card", "onnx_feed"]
