"""autotl against plain random search and a hand-picked recipe: same data, same budget, one process.

    python benchmarks/search_vs_baselines.py DATA --task TASK --budget SECONDS

Three arms run one after the other, each with BUDGET seconds of wall time, everything included
(loading the data, pre-ranking, every trial, pruned or not):

(a) ``autotl``: ``autotl search`` with the task's built-in recipe and every default (pre-ranking,
    start points, TPE, the Hyperband pruner, the frozen-prefix cache);
(b) ``random``: plain Optuna random search over the same space: no start points, no pruning, no
    pre-ranking, no cache;
(c) ``manual``: the hand-picked recipe a user would write (benchmarks/recipes/manual-TASK.yaml: one
    model, full fine-tune, fixed learning rate and epochs), one trial.

Every arm keeps every trial's weights. Afterwards (outside the budgets) each arm's incumbents (the
trials that were best on validation when they finished) are scored on the test split, which chose
nothing. The table gives each arm's test accuracy at the end of its budget and the seconds it took
until its incumbent was within one point of the best test accuracy any arm's incumbent reached,
with the ratio of each arm's numbers to (a)'s. The last line is one JSON object.

The cache folder is a fresh temporary one (``AUTOTL_CACHE_DIR``), so (a) starts cold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from optuna.trial import TrialState

from autotl.cli import _quiet_libraries
from autotl.plugins import get_registry
from autotl.progress import ConsoleReporter
from autotl.recipes import load_recipe
from autotl.search import Search, SearchOptions, weights_path

HERE = Path(__file__).resolve().parent
ARMS = ("autotl", "random", "manual")


def arm_recipes(task: str, folder: Path) -> dict[str, str]:
    """The recipe file of each arm: (a) the built-in one, (b) it made plain, (c) the hand-picked one."""
    builtin = load_recipe(task)
    plain = dict(builtin.raw)
    plain.update(start_with=[], sampler={"name": "random"}, pruner={"name": "none"}, prerank={"enabled": False},
                 cache={"enabled": False})
    plain["description"] = "plain random search over the built-in recipe's space"
    random_file = folder / f"random-{task}.yaml"
    random_file.write_text(yaml.safe_dump(plain, sort_keys=False))
    manual = HERE / "recipes" / f"manual-{task.split('-')[0]}.yaml"
    return {"autotl": task, "random": str(random_file), "manual": str(manual)}


def run_arm(name: str, recipe: str, args, out: Path) -> dict:
    options = SearchOptions(task=args.task, data=args.data, out=out, recipe=recipe, time_budget=args.budget,
                            seed=args.seed, keep_top=10**6, prerank=name == "autotl", cache=name == "autotl",
                            trials=1 if name == "manual" else None, max_failures=None)
    search = Search(options, get_registry(), ConsoleReporter())
    started = time.time()
    try:
        search.open()  # loading the data and pre-ranking count in the budget
        options.time_budget = max(1.0, args.budget - (time.time() - started))
        search.run()
        elapsed = time.time() - started
        study = search.study
        trials = study.get_trials(deepcopy=False)
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
        incumbents, best = [], None
        for t in done:  # the trial the arm would hand over at each moment: best on validation so far
            if best is None or t.value > best.value:
                best = t
                incumbents.append((t.datetime_complete.timestamp() - started, t))
        scored = [{"at_s": round(at, 1), "trial": t.number, "val_accuracy": round(t.value, 4),
                   "test_accuracy": test_accuracy(search, t), "params": t.user_attrs.get("config")}
                  for at, t in incumbents]
    finally:
        search.close()
    states = [t.state.name for t in trials]
    return {"seconds": round(elapsed, 1), "trials": len(trials), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "incumbents": scored,
            "test_accuracy": scored[-1]["test_accuracy"] if scored else None,
            "cache": [t.user_attrs.get("cache") for t in trials if t.user_attrs.get("cache")]}


def test_accuracy(search: Search, trial) -> float | None:
    if not search.data.has_test or not weights_path(search.options.out, trial.number).is_file():
        return None
    return round(search.test_accuracy(trial), 4)


def time_to(result: dict, target: float) -> float | None:
    return next((i["at_s"] for i in result["incumbents"] if i["test_accuracy"] is not None
                 and i["test_accuracy"] >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--task", required=True, help="image-classification or text-classification")
    parser.add_argument("--budget", type=float, required=True, help="seconds of wall time for each arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    parser.add_argument("--out", type=Path, help="keep the arms' run folders here (default: a temporary folder)")
    parser.add_argument("--results", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()
    _quiet_libraries()  # as `autotl search` does: Optuna's and timm's chatter off
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms takes {', '.join(ARMS)}")

    work = Path(tempfile.mkdtemp(prefix="autotl-bench-"))
    out = args.out or work
    os.environ["AUTOTL_CACHE_DIR"] = str(work / "cache")  # (a) starts with an empty cache
    recipes = arm_recipes(args.task, work)
    results = {}
    try:
        for arm in arms:
            print(f"=== arm {arm}: {args.budget:.0f} s, recipe {recipes[arm]}", file=sys.stderr, flush=True)
            results[arm] = run_arm(arm, recipes[arm], args, out / arm)
            print(f"=== arm {arm}: {json.dumps(results[arm])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work / "cache", ignore_errors=True)
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    seen = [i["test_accuracy"] for r in results.values() for i in r["incumbents"] if i["test_accuracy"] is not None]
    best = max(seen) if seen else None
    target = None if best is None else best - 0.01
    print(f"\n{args.data} ({args.task}), {args.budget:.0f} s per arm; best test accuracy seen {best}; "
          f"'within 1 pt' = test accuracy >= {target if target is None else round(target, 4)}")
    print(f"{'arm':8s} {'test acc':>9s} {'vs (a)':>7s} {'trials':>6s} {'pruned':>6s} {'s to 1pt':>9s} {'vs (a)':>7s}")
    a = results.get("autotl")
    a_time = time_to(a, target) if a and target is not None else None
    summary = {}
    for arm, r in results.items():
        reach = time_to(r, target) if target is not None else None
        acc_ratio = (r["test_accuracy"] / a["test_accuracy"]) if a and a["test_accuracy"] and r["test_accuracy"] else None
        time_ratio = (reach / a_time) if reach is not None and a_time else None
        summary[arm] = (r["test_accuracy"], reach)
        print(f"{arm:8s} {fmt(r['test_accuracy'], 4):>9s} {fmt(acc_ratio, 3):>7s} {r['complete']:>6d} "
              f"{r['pruned']:>6d} {fmt(reach, 1):>9s} {fmt(time_ratio, 2):>7s}")
    final = {"data": str(args.data), "task": args.task, "budget_s": args.budget, "best_test_acc_seen": best}
    for arm in ARMS:
        acc, reach = summary.get(arm, (None, None))
        final[f"{arm}_test_acc"] = acc
        final[f"{arm}_s_to_within_1pt"] = reach
    final["arms"] = results
    if args.results:
        args.results.write_text(json.dumps(final, indent=1))
    print(json.dumps(final))
    return 0


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
