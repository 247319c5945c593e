"""Does a search use its time budget, and end within it? ``autotl search`` as a user runs it, timed from outside.

    python benchmarks/budget_use.py DATA [DATA ...] --task TASK --budgets 2m,5m,10m [--seed 0] [--out FILE]

For each DATA folder and each budget, ``autotl search --task TASK DATA --time-budget B`` runs in a fresh run folder
(a cold cache) as a subprocess, and the wall time of the whole command is measured: starting Python, loading the
data, pre-ranking, the trials, the selection and refit, the test score, the ensemble, the leaderboard. From the
run's study it then reads when the last trial ended, how many trials ran (and how many were shortened to fit), and
the shortest trial seen (its setup and one epoch: :func:`autotl.budget.shortest_seconds`).

Each row says whether the search kept the promise of issue #14: it ended within the budget plus 10 s, and it did not
leave more than 10 % of the budget unused while the shortest trial would have fitted in what was left. The last line
is one JSON object: ``{"runs": [{"data", "budget_s", "wall_s", "over_s", "unused_s", "trials_end_s",
"trials", "shortened", "shortest_trial_s", "ok", "timeline"}]}`` (``timeline``: per trial its number, state, start
and end in seconds from the command's start, and why it was shortened). ``--out FILE`` keeps the runs (and skips those it holds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLACK_S = 10.0  # the budget plus this much: the promise
UNUSED = 0.10  # at most this share of the budget unused while a trial would fit


def parse_budget(text: str) -> float:
    """``90``, ``2m``, ``1h``: the seconds, as ``autotl search --time-budget`` reads them."""
    from autotl.cli import Duration

    return float(Duration().convert(text.strip(), None, None))


def autotl_command() -> list[str]:
    script = Path(sys.executable).with_name("autotl")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from autotl.cli import main; main()"]


def run_one(data: Path, task: str, budget: float, seed: int, work: Path) -> dict:
    """One timed ``autotl search`` and what its study recorded."""
    import optuna
    from optuna.trial import TrialState

    from autotl.budget import DONE, shortest_seconds

    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    command = [*autotl_command(), "search", "--task", task, str(data), "--time-budget", str(budget),
               "--seed", str(seed), "--out", str(out)]
    env = dict(os.environ, AUTOTL_CACHE_DIR=str(work / "cache"))
    shutil.rmtree(work / "cache", ignore_errors=True)
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"Error: {' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
                         f"{done.stderr[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    ended = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    shortest = shortest_seconds(study.get_trials(deepcopy=False, states=DONE))
    unused = max(0.0, budget - wall)
    over = max(0.0, wall - budget)
    wasted = unused > UNUSED * budget and shortest is not None and unused >= shortest
    stopped = next((line.strip() for line in (done.stdout + done.stderr).splitlines() if "Search stopped" in line), "")
    timeline = [[t.number, t.state.name[:4], round(t.datetime_start.timestamp() - started, 1) if t.datetime_start
                 else None, round(t.datetime_complete.timestamp() - started, 1) if t.datetime_complete else None,
                 t.user_attrs.get("shortened") or ""] for t in trials]
    return {"data": data.name, "budget_s": budget, "wall_s": round(wall, 1), "over_s": round(over, 1),
            "unused_s": round(unused, 1), "trials_end_s": round(max(ended) - started, 1) if ended else None,
            "trials": len(trials), "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "timeline": timeline,  # per trial: number, state, started and ended (s from the command's start), why short
            "shortened": sum(bool(t.user_attrs.get("shortened")) for t in trials),
            "shortest_trial_s": round(shortest, 1) if shortest is not None else None,
            "stopped": stopped, "ok": over <= SLACK_S and not wasted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="data folders, each searched at every budget")
    parser.add_argument("--task", required=True)
    parser.add_argument("--budgets", default="2m,5m,10m", help="comma-separated durations (default 2m,5m,10m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="a JSON file to keep the runs in, and to resume from")
    args = parser.parse_args()
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b.strip()]
    for folder in args.data:
        if not folder.is_dir():
            print(f"Error: {folder} is not a folder; give data folders as for `autotl search`", file=sys.stderr)
            return 2
    runs = json.loads(args.out.read_text())["runs"] if args.out and args.out.is_file() else []
    held = {(r["data"], r["budget_s"]) for r in runs}
    with tempfile.TemporaryDirectory(prefix="autotl-budget-") as tmp:
        for folder in args.data:
            for budget in budgets:
                if (folder.name, budget) in held:
                    continue
                print(f"=== {folder.name}, --time-budget {budget:.0f}s", flush=True)
                row = run_one(folder, args.task, budget, args.seed, Path(tmp))
                print(f"=== {json.dumps(row)}", flush=True)
                runs.append(row)
                if args.out:
                    args.out.write_text(json.dumps({"task": args.task, "runs": runs}, indent=1))
    print()
    print(f"{'data':20} {'budget':>7} {'wall':>7} {'over':>6} {'unused':>7} {'trials':>7} {'short':>6} "
          f"{'shortest':>9}  ok")
    for r in runs:
        print(f"{r['data'][:20]:20} {r['budget_s']:7.0f} {r['wall_s']:7.1f} {r['over_s']:6.1f} {r['unused_s']:7.1f} "
              f"{r['trials']:7d} {r['shortened']:6d} {r['shortest_trial_s'] if r['shortest_trial_s'] is not None else '-':>9}"
              f"  {'yes' if r['ok'] else 'NO'}")
    print(f"{sum(r['ok'] for r in runs)} of {len(runs)} searches ended within their budget plus {SLACK_S:.0f}s "
          f"without leaving more than {UNUSED:.0%} of it unused while a trial fitted")
    print(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
