"""Spread one search over several worker processes on PostgreSQL, SIGKILL one mid-trial, and report.

    python benchmarks/kill_a_worker.py DATA --task image-classification --trials 12 --workers 3

Starts a throwaway PostgreSQL server on loopback (tests/postgres_server.py; or give --storage URL),
begins the study with `autotl search`, joins it with `autotl worker` processes, kills one worker
with SIGKILL while it runs a trial, waits for the others, and prints the timings, the checks (trials
completed, duplicates, the killed trial retried) and the leaderboard. Exit code 0 when every check
holds. The heartbeat grace is shortened (--grace) so the dead worker's trial is found in seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotl.records import StudyRecord, TrialRecord, retry_of

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import postgres_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--task", required=True)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--recipe", help="recipe for the search (default: the task's)")
    parser.add_argument("--models", help="--models for the search")
    parser.add_argument("--storage", help="a PostgreSQL URL (default: start a throwaway server)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--interval", type=int, default=2, help="heartbeat interval, s")
    parser.add_argument("--grace", type=int, default=10, help="heartbeat grace period, s")
    parser.add_argument("--kill-after", type=float, default=3.0,
                        help="seconds into the victim's trial before the kill")
    args = parser.parse_args()

    pg_dir = None
    url = args.storage
    if url is None:
        pg_dir = Path(tempfile.mkdtemp(prefix="autotl-kill-postgres-"))
        url = postgres_server.start(pg_dir)
    out = Path(args.out or tempfile.mkdtemp(prefix="autotl-kill-run-"))
    study_name = f"kill-{int(time.time())}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250", "AUTOTL_STORAGE": url,
           "AUTOTL_HEARTBEAT_INTERVAL": str(args.interval), "AUTOTL_HEARTBEAT_GRACE": str(args.grace)}
    autotl = [sys.executable, "-m", "autotl.cli"]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        started = time.time()
        search = [*autotl, "search", "--task", args.task, args.data, "--out", str(out), "--study", study_name,
                  "--trials", str(args.trials)]
        if args.recipe:
            search += ["--recipe", args.recipe]
        if args.models:
            search += ["--models", args.models]
        procs = {"worker-0 (search)": subprocess.Popen(search, env=env, stdout=open(logs / "w0.out", "w"),
                                                       stderr=open(logs / "w0.err", "w"))}
        study = _wait_for_study(url, study_name, procs["worker-0 (search)"])
        for i in range(1, args.workers):
            procs[f"worker-{i}"] = subprocess.Popen(
                [*autotl, "worker", "--study", study_name, "--trials", str(args.trials)], env=env,
                stdout=open(logs / f"w{i}.out", "w"), stderr=open(logs / f"w{i}.err", "w"))
        victim_name = f"worker-{args.workers - 1}"
        victim = procs[victim_name]
        killed = None
        while killed is None:
            if victim.poll() is not None:
                raise SystemExit(f"{victim_name} ended before it could be killed; see {logs}")
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if str(TrialRecord.from_trial(t).worker or "").endswith(f":{victim.pid}") and t.datetime_start:
                    if time.time() - t.datetime_start.timestamp() >= args.kill_after:
                        killed = t
            time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kill_time = time.time() - started
        print(f"SIGKILL {victim_name} (pid {victim.pid}) at {kill_time:.0f}s, during trial {killed.number}",
              flush=True)
        codes = {name: proc.wait() for name, proc in procs.items() if proc is not victim}
        wall = time.time() - started

        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        retry = next((t for t in trials if retry_of(t) == killed.number), None)
        fail_seen = study.trials[killed.number].datetime_complete
        checks = {
            f"{args.trials} trials completed": len(complete) == args.trials,
            "no trial left RUNNING or WAITING": not any(t.state in (TrialState.RUNNING, TrialState.WAITING)
                                                         for t in trials),
            "killed trial marked failed": study.trials[killed.number].state == TrialState.FAIL,
            "killed trial retried and completed": retry is not None and retry.state == TrialState.COMPLETE,
            "the retry has the killed trial's parameters": retry is not None and retry.params == killed.params,
            "no parameters run twice by the workers (besides the retry)":
                len({tuple(sorted(t.params.items())) for t in complete}) == len(complete),
            "surviving workers exited 0": all(code == 0 for code in codes.values()),
        }
        print(f"wall time {wall:.0f}s for {len(trials)} trials over {args.workers} workers "
              f"({len(complete)} complete); the killed trial was failed "
              f"{(fail_seen.timestamp() - started - kill_time) if fail_seen else float('nan'):.0f}s after the kill "
              f"(grace {args.grace}s) and retried as trial {retry.number if retry else '-'}"
              + (f" ({retry.duration.total_seconds():.0f}s)" if retry and retry.duration else ""))
        per_worker = {}
        for t in complete:
            per_worker.setdefault(TrialRecord.from_trial(t).worker, []).append(t.number)
        for worker, numbers in per_worker.items():
            print(f"  {worker}: trials {numbers}")
        for check, ok in checks.items():
            print(f"  [{'ok' if ok else 'FAILED'}] {check}")
        board = subprocess.run([*autotl, "trials", "--study", study_name], env=env, capture_output=True, text=True)
        print(board.stdout)
        return 0 if all(checks.values()) else 1
    finally:
        if pg_dir is not None:
            postgres_server.stop(pg_dir)
            shutil.rmtree(pg_dir, ignore_errors=True)


def _wait_for_study(url: str, name: str, proc: subprocess.Popen) -> optuna.Study:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the search ended before it began the study (exit {proc.returncode})")
        try:
            study = optuna.load_study(study_name=name, storage=url)
            if StudyRecord.from_study(study).task:
                return study
        except KeyError:
            pass
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
