"""How well the zero-cost pre-ranking predicts fine-tuned accuracy: Kendall tau per estimate, per data set.

For one data set, every source model is (1) scored by the pre-ranking the search runs (LogME,
H-score, GBC and their mean rank, from the pretrained features of the training split) and (2)
fine-tuned once with the same, fixed settings: the recipe's first start point with the model swapped
in (the parameters :func:`autotl.transfer.feature_params` gives; for the image recipe: full
fine-tuning, 128 px, 12 epochs, lr 1e-3, seed 0), its best epoch scored on the test split. Then
Kendall's tau (scipy.stats.kendalltau, tau-b) between each estimate and the fine-tuned accuracies.

The steps can run one at a time, each appending to a JSON results file, so that a slow machine can
be shared (one fine-tune per invocation)::

    python benchmarks/transferability.py DATA --results r.json --step rank
    python benchmarks/transferability.py DATA --results r.json --step finetune --model mobilenetv2_100
    python benchmarks/transferability.py DATA --results r.json --step report

Without ``--step`` it runs every step in one go. The models are the task's offline zoo unless
``--models a,b`` names others. The report's last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from autotl.plugins import get_registry
from autotl.recipes import load_recipe
from autotl.inference import predict_outputs
from autotl.training import train
from autotl.transfer import METRICS, feature_params, rank_models, table


def load(data: Path, task_name: str, recipe_name: str | None, models: list[str] | None, seed: int):
    registry = get_registry()
    task = registry.tasks[task_name]
    recipe = load_recipe(recipe_name or task_name)
    families = registry.families_for(task)
    names = models or recipe.models or [n for f in families for n in f.default_zoo()]
    zoo = {name: next(f for f in families if f.owns(name)).get(name) for name in names}
    loaded = task.load(data, seed=seed, val_fraction=recipe.val_fraction, options=recipe.data)
    return task, recipe, zoo, loaded


def step_rank(task, recipe, zoo, data, seed) -> dict:
    started = time.perf_counter()
    rows = rank_models(task, data, zoo, recipe, torch.device("cpu"), settings=recipe.prerank, seed=seed,
                       say=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    for line in table(rows):
        print(line)
    return {"seconds": round(seconds, 2), "rows": [r.as_dict() for r in rows]}


def step_finetune(task, recipe, zoo, data, model: str, seed: int) -> dict:
    backbone = zoo[model]
    params = feature_params(recipe, model)
    prepared = task.prepare(data, backbone, params)
    started = time.perf_counter()
    result = train(backbone, params, prepared.train, prepared.val, task.target, task.target.width(data.label_names),
                   device=torch.device("cpu"), seed=seed)
    seconds = time.perf_counter() - started
    net = result.adapted.model
    net.load_state_dict(result.best_state)
    scores = (task.target.score(predict_outputs(net, prepared.test, torch.device("cpu")), prepared.test.labels,
                                result.calibration) if prepared.test is not None else None)
    test = scores["accuracy"] if scores is not None else None
    # the mean cross-entropy on the test split tells models apart where accuracies tie (lfw_faces: all 1.0)
    loss = scores["log_loss"] if scores is not None else None
    row = {"model": model, "val_accuracy": result.best_value, "test_accuracy": test, "test_loss": loss,
           "best_epoch": result.best_epoch + 1,
           "seconds": round(seconds, 1), "params": {k: v for k, v in params.items() if k != "model"}}
    print(f"{model}: val {result.best_value:.4f}, test {test if test is None else round(test, 4)}, "
          f"{seconds:.0f}s", flush=True)
    return row


def report(results: dict, name: str) -> dict:
    rows = [r for r in results.get("rank", {}).get("rows", []) if r.get("rank") is not None]
    tuned = results.get("finetune", {})
    models = [r["model"] for r in rows if r["model"] in tuned]
    missing = sorted({r["model"] for r in rows} - set(models))
    out: dict = {"data": name, "models": len(models), "missing_finetunes": missing}
    by_model = {r["model"]: r for r in rows}
    estimates = {m: [by_model[x][m] for x in models] for m in METRICS}
    estimates["combined"] = [-by_model[x]["mean_rank"] for x in models]  # higher is better, like the rest
    targets = {"test": [tuned[x]["test_accuracy"] for x in models], "val": [tuned[x]["val_accuracy"] for x in models]}
    if all(tuned[x].get("test_loss") is not None for x in models):
        targets["-test_loss"] = [-tuned[x]["test_loss"] for x in models]  # higher is better, like accuracy
    print(f"\n{name}: {len(models)} models" + (f" (not fine-tuned yet: {', '.join(missing)})" if missing else ""))
    width = max([5] + [len(x) for x in models])
    print(f"  {'model':<{width}}  {'rank':>4}" + "".join(f"  {t:>9}" for t in METRICS.values())
          + f"  {'mean rank':>9}  {'val acc':>7}  {'test acc':>8}  {'rank s':>6}  {'tune s':>6}")
    for x in sorted(models, key=lambda x: by_model[x]["rank"]):
        r, t = by_model[x], tuned[x]
        print(f"  {x:<{width}}  {r['rank']:>4}" + "".join(f"  {r[m]:>9.4g}" for m in METRICS)
              + f"  {r['mean_rank']:>9.2f}  {t['val_accuracy']:>7.4f}  {t['test_accuracy']:>8.4f}"
              + f"  {r['seconds']:>6.1f}  {t['seconds']:>6.0f}"
              + (f"  test loss {t['test_loss']:.4f}" if t.get("test_loss") is not None else ""))
    print(f"  Kendall tau (tau-b) against fine-tuned accuracy, {len(models)} models:")
    for target, values in targets.items():
        for estimate, scores in estimates.items():
            if len(models) >= 2:
                tau, p = kendalltau(scores, values)
                tau = None if np.isnan(tau) else round(float(tau), 3)
                p = None if np.isnan(p) else round(float(p), 3)
            else:
                tau = p = None
            out[f"tau_{estimate}_{target}"] = tau
            what = "test cross-entropy (lower better)" if target == "-test_loss" else f"{target} accuracy"
            out[f"tau_{estimate}_{target.lstrip('-')}"] = out.pop(f"tau_{estimate}_{target}")
            print(f"    {estimate:<8} vs {what}: tau {tau}  (p {p})" + ("  [undefined: the accuracies all tie]"
                                                                         if tau is None and len(set(values)) == 1 else ""))
    rank_s = results.get("rank", {}).get("seconds")
    tune_s = [tuned[x]["seconds"] for x in models]
    out["rank_seconds_all_models"] = rank_s
    out["finetune_seconds_mean"] = round(float(np.mean(tune_s)), 1) if tune_s else None
    if rank_s and tune_s:
        print(f"  cost: ranking all {len(rows)} models took {rank_s:.1f}s; one fine-tune {np.mean(tune_s):.0f}s on "
              f"average ({min(tune_s):.0f}-{max(tune_s):.0f}s): the ranking costs "
              f"{rank_s / np.mean(tune_s):.2f} of one fine-tune")
    best_predicted = min(models, key=lambda x: by_model[x]["rank"]) if models else None
    best_tuned = max(models, key=lambda x: tuned[x]["test_accuracy"]) if models else None
    out["predicted_best"], out["finetuned_best"] = best_predicted, best_tuned
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--task", default="image-classification")
    parser.add_argument("--recipe", default=None, help="recipe name or file [default: the task's]")
    parser.add_argument("--models", default=None, help="comma-separated models [default: the offline zoo]")
    parser.add_argument("--results", type=Path, required=True, help="JSON file the steps append to")
    parser.add_argument("--step", choices=["rank", "finetune", "report"], default=None, help="one step [default: all]")
    parser.add_argument("--model", default=None, help="the one model to fine-tune with --step finetune [default: all]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: data folder {args.data} not found (the shared data sets live in ../shared/datasets; "
                 "see its README.md)")
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if args.step == "report":
        print(json.dumps(report(results, args.data.name)))
        return
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    task, recipe, zoo, data = load(args.data, args.task, args.recipe, models, args.seed)

    def save() -> None:
        args.results.write_text(json.dumps(results, indent=1))

    if args.step in (None, "rank"):
        results["rank"] = step_rank(task, recipe, zoo, data, args.seed)
        save()
    if args.step in (None, "finetune"):
        for model in [args.model] if args.model else list(zoo):
            if model not in zoo:
                sys.exit(f"error: --model {model} is not among the models: {', '.join(zoo)}")
            results.setdefault("finetune", {})[model] = step_finetune(task, recipe, zoo, data, model, args.seed)
            save()
    if args.step is None:
        print(json.dumps(report(results, args.data.name)))


if __name__ == "__main__":
    main()
