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

``--repeats N`` runs the whole comparison N times, with seeds ``--seed`` to ``--seed + N - 1`` (the
samplers, the splits' shuffling and every initialisation change with it; the cache starts empty
each time): one run measures a random search's luck as much as anything. Each repeat is its own
side-by-side comparison (its own best accuracy and target); the table shows every repeat, then
the medians over the repeats, where an arm that never came within a point counts as slower than
any that did. The JSON's ``*_test_acc`` and ``*_s_to_within_1pt`` are those medians (the single
run's numbers when N is 1), and ``repeats`` holds each repeat in full.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from optuna.trial import TrialState

from autotl.controller import Search, SearchOptions
from autotl.inference import predict_outputs
from autotl.plugins import get_registry
from autotl.progress import ConsoleReporter, quiet_libraries
from autotl.recipes import load_recipe
from autotl.records import TrialRecord
from autotl.run import Run

HERE = Path(__file__).resolve().parent
ARMS = ("autotl", "random", "manual")


def arm_recipes(task: str, folder: Path) -> dict[str, str]:
    """The recipe file of each arm: (a) the built-in one, (b) it made plain, (c) the hand-picked one."""
    builtin = load_recipe(task)
    plain = dict(builtin.raw)
    plain.update(start_with=[], sampler={"name": "random"}, pruner={"name": "none"}, prerank={"enabled": False},
                 cache={"enabled": False}, converged_head={"enabled": False}, selection={"cv_below": 0})
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
        search.open()  # loading the data and pre-ranking count in the budget (it starts with open())
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
                   "test_accuracy": test_accuracy(search, t), "params": TrialRecord.from_trial(t).config}
                  for at, t in incumbents]
    finally:
        search.close()
    states = [t.state.name for t in trials]
    return {"seconds": round(elapsed, 1), "trials": len(trials), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "incumbents": scored,
            "test_accuracy": scored[-1]["test_accuracy"] if scored else None,
            "cache": [TrialRecord.from_trial(t).cache for t in trials if TrialRecord.from_trial(t).cache]}


def test_accuracy(search: Search, trial) -> float | None:
    """The trial's kept weights on the test split, through the run opened as `autotl export` opens it."""
    weights = search.kept_weights(trial)
    if not search.data.has_test or weights is None:
        return None
    run = Run(search.location, search.study, search.registry)
    params = run.config(trial)
    backbone = search.zoo[params["model"]]
    model = run.network(trial, search.device, weights=weights, backbone=backbone)
    test = search.task.prepare(search.data, backbone, params).test
    scores = search.target.score(predict_outputs(model, test, search.device), test.labels,
                                 TrialRecord.from_trial(trial).calibration)
    return round(scores[search.metric], 4)


def time_to(result: dict, target: float) -> float | None:
    return next((i["at_s"] for i in result["incumbents"] if i["test_accuracy"] is not None
                 and i["test_accuracy"] >= target), None)


def compare(results: dict) -> dict:
    """One repeat's verdict: the best test accuracy seen, the target, each arm's accuracy and time to it."""
    seen = [i["test_accuracy"] for r in results.values() for i in r["incumbents"] if i["test_accuracy"] is not None]
    best = max(seen) if seen else None
    target = None if best is None else round(best - 0.01, 4)
    arms = {arm: {"test_acc": r["test_accuracy"], "s_to_within_1pt": time_to(r, target) if target is not None else None,
                  "complete": r["complete"], "pruned": r["pruned"]} for arm, r in results.items()}
    return {"best_test_acc_seen": best, "target": target, "arms": arms}


def median_time(values: list[float | None]) -> float | None:
    """The median, where None (never reached) is slower than any time; None if the median itself is."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else round(m, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--task", required=True, help="image-classification or text-classification")
    parser.add_argument("--budget", type=float, required=True, help="seconds of wall time for each arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the comparison this many times (seeds SEED, SEED+1, ...) and report medians")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    parser.add_argument("--out", type=Path, help="keep the arms' run folders here (default: a temporary folder)")
    parser.add_argument("--results", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()
    quiet_libraries()  # as `autotl search` does: Optuna's and timm's chatter off
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms takes {', '.join(ARMS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="autotl-bench-"))
    out = args.out or work
    recipes = arm_recipes(args.task, work)
    first_seed = args.seed
    repeats = []
    try:
        for r in range(args.repeats):
            args.seed = first_seed + r
            os.environ["AUTOTL_CACHE_DIR"] = str(work / f"cache-{r}")  # (a) starts with an empty cache
            results = {}
            for arm in arms:
                print(f"=== repeat {r + 1}/{args.repeats} (seed {args.seed}), arm {arm}: {args.budget:.0f} s, "
                      f"recipe {recipes[arm]}", file=sys.stderr, flush=True)
                folder = out / arm if args.repeats == 1 else out / f"seed{args.seed}" / arm
                results[arm] = run_arm(arm, recipes[arm], args, folder)
                print(f"=== arm {arm}: {json.dumps(results[arm])}", file=sys.stderr, flush=True)
            shutil.rmtree(work / f"cache-{r}", ignore_errors=True)
            repeats.append({"seed": args.seed, **compare(results), "results": results})
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.data} ({args.task}), {args.budget:.0f} s per arm, {len(repeats)} repeat(s); 'within 1 pt' = "
          "test accuracy >= the repeat's best test accuracy seen, minus 0.01")
    print(f"{'seed':>6s} {'arm':8s} {'test acc':>9s} {'vs (a)':>7s} {'trials':>6s} {'pruned':>6s} {'s to 1pt':>9s} "
          f"{'vs (a)':>7s}")
    for rep in repeats:
        a = rep["arms"].get("autotl")
        print(f"{rep['seed']:>6d} best seen {fmt(rep['best_test_acc_seen'], 4)}, target {fmt(rep['target'], 4)}")
        for arm, v in rep["arms"].items():
            print(row(str(rep["seed"]), arm, v["test_acc"], v["s_to_within_1pt"], a, v["complete"], v["pruned"]))
    final = {"data": str(args.data), "task": args.task, "budget_s": args.budget, "repeats_n": len(repeats),
             "best_test_acc_seen": statistics.median([rep["best_test_acc_seen"] for rep in repeats
                                                       if rep["best_test_acc_seen"] is not None] or [math.nan])}
    medians = {}
    for arm in arms:
        accs = [rep["arms"][arm]["test_acc"] for rep in repeats if rep["arms"][arm]["test_acc"] is not None]
        medians[arm] = {"test_acc": round(statistics.median(accs), 4) if accs else None,
                        "s_to_within_1pt": median_time([rep["arms"][arm]["s_to_within_1pt"] for rep in repeats])}
    if len(repeats) > 1:
        a = medians.get("autotl")
        for arm, v in medians.items():
            print(row("median", arm, v["test_acc"], v["s_to_within_1pt"], a))
    for arm in ARMS:
        final[f"{arm}_test_acc"] = medians.get(arm, {}).get("test_acc")
        final[f"{arm}_s_to_within_1pt"] = medians.get(arm, {}).get("s_to_within_1pt")
    final["repeats"] = repeats
    if args.results:
        args.results.write_text(json.dumps(final, indent=1))
    print(json.dumps(final))
    return 0


def row(seed: str, arm: str, acc, reach, a: dict | None, complete=None, pruned=None) -> str:
    a_acc = a["test_acc"] if a else None
    a_time = a["s_to_within_1pt"] if a else None
    acc_ratio = acc / a_acc if acc and a_acc else None
    time_ratio = reach / a_time if reach is not None and a_time else None
    counts = (f"{complete:>6d} {pruned:>6d}" if complete is not None else f"{'':>6s} {'':>6s}")
    return (f"{seed:>6s} {arm:8s} {fmt(acc, 4):>9s} {fmt(acc_ratio, 3):>7s} {counts} {fmt(reach, 1):>9s} "
            f"{fmt(time_ratio, 2):>7s}")


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
