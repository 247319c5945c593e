"""A bundle's model card (``README.md``): for a person deciding whether and how to use the model.

Written by ``autotl export`` from the bundle's :class:`~autotl.bundle_config.BundleConfig`, one
function per section; the metrics are named as the task's target names them in the config.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .bundle_config import CONFIG, WEIGHTS, BundleConfig


def model_card(config: BundleConfig) -> str:
    """README.md of a bundle: what the model is, how good, from what search, how fast, how to use it."""
    sections = (_title, _scores, _trained_on, _search, _size_and_speed, _use, _limits, _files)
    if config.ensemble is not None:
        sections = (_ensemble_title, _scores, _members, _ensemble_trained_on, _ensemble_search, _size_and_speed,
                    _use, _limits, _files)
    return "\n".join(line for section in sections for line in section(config)) + "\n"


def _ensemble_title(c: BundleConfig) -> list[str]:
    members = c.ensemble.members
    return [f"# An ensemble of {len(members)} networks for {c.task} ({len(c.label_names)} labels)", "",
            f"An autotl bundle: trials {', '.join(str(m.trial) for m in members)} of an automated transfer-learning "
            f"search, their outputs combined by the task's target with the weights below, exported {c.created}. "
            f"Chosen by: {c.ensemble.chosen_by}.", ""]


def _members(c: BundleConfig) -> list[str]:
    metric, single = c.metric, c.ensemble.best_single or {}
    lines = ["## Members", "", f"| trial | model | weight | validation {metric} | ms/item at batch 1 | folder |",
             "|---|---|---|---|---|---|"]
    for m in c.ensemble.members:
        lines.append(f"| {m.trial} | `{m.model}` | {m.weight:.3f} | {_acc(m.val)} | "
                     f"{'-' if m.latency_ms is None else f'{m.latency_ms:.2f}'} | `{m.folder}/` |")
    lines += ["", f"The ensemble's validation score is {c.ensemble.val_note}."]
    if single:
        lines.append(f"The best single trial of the search, trial {single.get('trial')}: validation {metric} "
                     f"{_acc(single.get('val'))}, test {metric} {_acc(single.get('test'))}.")
    lines.append("Each member is a whole bundle of its own (its own preprocessing, card and checksums); "
                 "`autotl predict` runs every member and combines their outputs.")
    return lines + [""]


def _data_lines(c: BundleConfig) -> list[str]:
    """The start of a card's "Trained on" section: the data folder and fingerprint, and the split sizes."""
    data, sizes = c.data, c.data.sizes or {}
    lines = ["## Trained on", "", f"- Data: `{data.path}` (fingerprint `{data.fingerprint}`)."]
    if sizes:
        lines.append(f"- Samples: {sizes.get('train')} train, {sizes.get('val')} validation"
                     + (f", {sizes.get('test')} test" if sizes.get("test") else "") + ".")
    return lines


def _ensemble_trained_on(c: BundleConfig) -> list[str]:
    data, lines = c.data, _data_lines(c)
    if data.note:
        lines.append(f"- Note: {data.note}.")
    lines.append("- Each member's source model and adaptation: its own README.md.")
    return lines + [""]


def _ensemble_search(c: BundleConfig) -> list[str]:
    search, t = c.search, c.search.trials
    return ["## The search that chose them", "",
            f"- {sum(t.values())} trials ({t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
            f"{t.get('fail', 0)} failed), {search.sampler} sampler, seed {search.seed}; {search.location}.",
            f"- Members and weights chosen on the {c.ensemble.selected_on} split: {c.ensemble.chosen_by}.", ""]


def _title(c: BundleConfig) -> list[str]:
    params = c.trial.params
    return [f"# {params.get('model')} for {c.task} ({len(c.label_names)} labels)", "",
            f"An autotl bundle: trial {c.trial.number} of an automated transfer-learning search, "
            f"{'refit on train+val, ' if c.refit else ''}exported {c.created}.", ""]


def _scores(c: BundleConfig) -> list[str]:
    scores, sizes, metric = c.scores, c.data.sizes or {}, c.metric
    checked = c.verification.get(f"val_{metric}")
    val_note = "chose the trial among the search's trials, so slightly optimistic"
    if c.ensemble is not None:
        val_note = f"the ensemble's; {c.ensemble.val_note}"
    if c.refit:
        val_note = "of the trial before the refit; the refit model trained on this split, so it has no validation score"
    elif checked is not None and checked.equal:
        val_note += "; the bundle reproduces it exactly"
    direction = f" ({'lower' if c.target and c.target.direction == 'minimize' else 'higher'} is better)" \
        if c.target is not None else ""
    lines = ["## Scores", "", f"| split | {metric}{direction} | |", "|---|---|---|",
             f"| validation{_n(sizes.get('val'))} | {_acc(scores.val)} | {val_note} |"]
    if scores.test is not None:
        origin = {"search": "scored by the search once it had chosen its best trial",
                  "export": "scored at export, once the trial was chosen"}.get(scores.test_from, "")
        if c.ensemble is not None:
            origin = "scored once the search had selected the ensemble"
        lines.append(f"| test{_n(sizes.get('test'))} | {_acc(scores.test)} | never used to choose; {origin} |")
    else:
        lines.append("| test | not scored | the data had no test split, or it was not available at export |")
    for split, metrics in (("validation", scores.val_metrics), ("test", scores.test_metrics)):
        if metrics:
            lines += ["", f"Every metric on the {split} split: "
                      + ", ".join(f"{name} {_acc(value)}" for name, value in metrics.items()) + "."]
    return lines + ["", f"Labels, in the order of the model's outputs: {', '.join(f'`{x}`' for x in c.label_names)}.",
                    ""]


def _trained_on(c: BundleConfig) -> list[str]:
    data, lines = c.data, _data_lines(c)
    if data.val_from_train and data.val_fraction is not None:
        lines.append(f"- Without a validation split of its own, {data.val_fraction:g} of the training data is "
                     "held out for validation (seeded, stratified as the task draws it).")
    if data.note:
        lines.append(f"- Note: {data.note}.")
    lines.append(f"- Source model: {c.backbone.description}, adapted with " + _adaptation(c.trial.params) + ".")
    if c.refit:
        lines.append(f"- Refit: {c.refit.note} ({c.refit.samples} samples, {c.refit.epochs} epoch(s)).")
    return lines + [""]


def _search(c: BundleConfig) -> list[str]:
    search, trial, params = c.search, c.trial, c.trial.params
    t = search.trials
    lines = ["## The search that chose it", "",
             f"- {sum(t.values())} trials ({t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
             f"{t.get('fail', 0)} failed), {search.sampler} sampler, "
             f"{'no' if search.pruner == 'none' else search.pruner} pruner, seed {search.seed}; {search.location}.",
             f"- Chosen by: {trial.chosen_by}; rank {trial.rank} by validation {c.metric}."]
    if search.models:
        lines.append(f"- Models searched: {', '.join(f'`{m}`' for m in search.models)}.")
    if search.space:
        lines.append("- Searched: " + "; ".join(f"`{k}` {_spec(v)}" for k, v in search.space.items()) + ".")
    if search.fixed:
        lines.append("- Fixed: " + ", ".join(f"`{k}`={v}" for k, v in search.fixed.items()) + ".")
    lines.append("- This trial: " + ", ".join(f"`{k}`={_value(v)}" for k, v in params.items()) + ".")
    if trial.best_epoch:
        lines.append(f"- Best epoch: {trial.best_epoch} of {params.get('epochs')} (validation {c.metric} per epoch "
                     f"{trial.val_curve}).")
    return lines + [""]


def _size_and_speed(c: BundleConfig) -> list[str]:
    lines = ["## Size and speed", ""]
    cost = c.cost
    if cost is not None and cost.parameters:
        lines.append(f"- Parameters: {cost.parameters:,} (LoRA merged: the plain network"
                     + ("s of the members, added" if c.ensemble is not None else "") + ").")
    if c.ensemble is not None:
        lines.append("- The latencies below are the members' added: they run one after the other.")
    for label, latency in (("at the search", cost and cost.latency_at_search),
                           ("at export", cost and cost.latency_at_export)):
        if latency:
            lines.append(f"- Latency {label}: {latency['batch1_ms']:.2f} ms per item at batch 1, "
                         f"{latency['batched_ms']:.2f} ms per item at batch {latency['batch_size']} "
                         f"({latency['engine']}, {latency['device']}{_threads(latency)}; median of a few "
                         "warm runs, model only, preprocessing excluded).")
    lines += [_format_line(fmt, info) for fmt, info in c.formats.items()]
    return lines + [""]


def _format_line(fmt: str, info: Mapping[str, Any]) -> str:
    """One ONNX or TorchScript file: its parity with the PyTorch network and its latency."""
    if "files" in info:  # an ensemble's members' files, checked together
        parity = info["parity"]
        return (f"- {fmt}: the members' files ({', '.join(f'`{f}`' for f in info['files'])}) together give "
                f"probabilities within {parity['max_abs_diff_probability']:.1e} of the PyTorch ensemble on "
                f"{parity['items']} real validation inputs (tolerance {parity['tolerance']:.0e}).")
    if "skipped" in info:
        return f"- {fmt}: not written ({info['skipped']})."
    parity, latency = info["parity"], info["latency"]
    return (f"- `{info['file']}` ({info['exporter']}): probabilities within {parity['max_abs_diff_probability']:.1e} "
            f"of the PyTorch network on {parity['items']} real validation inputs (tolerance "
            f"{parity['tolerance']:.0e}; top-1 agreement {parity['top1_agreement']}); {latency['batch1_ms']:.2f} "
            f"ms per item at batch 1, {latency['batched_ms']:.2f} at batch {latency['batch_size']} on "
            f"{info['engine']}.")


def _use(c: BundleConfig) -> list[str]:
    return ["## Use", "",
            "```", "autotl predict BUNDLE INPUT...            # each input and what the model predicts for it",
            "autotl predict BUNDLE INPUT... --json", "```", "", "```python", "import autotl",
            "model = autotl.load(\"BUNDLE\")", "for p in model.predict([...]):", "    print(p.as_dict())",
            "```", "",
            ("Inputs are preprocessed exactly as in the search: "
             + "; ".join(f"{k}: {_value(v)}" for k, v in c.preprocessing.items()) + "." if c.ensemble is None else
             "Each member preprocesses the inputs exactly as in the search (see its README.md)."),
            ""]


def _limits(c: BundleConfig) -> list[str]:
    return [
        "## Intended use and limits", "",
        f"- Intended for inputs like the training data, with the {len(c.label_names)} labels above, as they appear "
        f"in `{c.data.path}`. The model predicts only in those terms: it has no \"none of these\", and a low "
        "probability is a hint, not a guarantee, that an input is out of scope.",
        "- The scores come from small held-out splits of the same data; expect worse scores on data gathered "
        "differently (other cameras, sources, populations, time).",
        "- Check it on your own labelled samples before relying on it, and keep a person in the loop for "
        "decisions that matter. It has not been audited for bias or fairness.",
        "- Latencies were measured on the machine named above; measure on yours.",
        "",
    ]


def _files(c: BundleConfig) -> list[str]:
    lines = ["## Files", "", f"- `{CONFIG}`: everything above as JSON, with the library versions."]
    for name, digest in c.files.items():
        lines.append(f"- `{name}`: sha256 `{digest}`" + (" (checked on every load)" if name == WEIGHTS else ""))
    return lines + ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in c.versions.items()) + "."]


def _threads(latency: Mapping[str, Any]) -> str:
    n = latency.get("threads")
    return "" if not n else f", {n} thread" + ("s" if n > 1 else "")


def _acc(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _n(n: int | None) -> str:
    return f" ({n})" if n else ""


def _adaptation(params: Mapping[str, Any]) -> str:
    """How the source model was adapted: freeze depth, LoRA rank, learning rate, epochs."""
    freeze = int(params.get("freeze", 0) or 0)
    rank = int(params.get("lora_rank", 0) or 0)
    parts = ["full fine-tuning" if freeze == 0 else f"the first {freeze} layer group(s) frozen"]
    if rank:
        parts.append(f"LoRA rank {rank} on the rest (merged into the weights)")
    parts.append(f"lr {params.get('lr'):.2g}" if isinstance(params.get("lr"), float) else f"lr {params.get('lr')}")
    parts.append(f"{params.get('epochs')} epochs")
    return ", ".join(parts)


def _spec(spec: Any) -> str:
    """A searched parameter's range as the recipe gave it: ``in {a, b}``, ``from 0.001 to 0.1 (log)``."""
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


__all__ = ["model_card"]
