"""Many workers on one PostgreSQL study, dead workers, SIGKILL and resume: real processes, real kills.

Each test runs `autotl` in subprocesses (the tiny timm network registered first, see tiny.py) and
kills them with SIGKILL, the way a cluster's scheduler or the OOM killer does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tiny import TINY, make_image_folder

from autotl.records import retry_of
from autotl.runs import INTERRUPTED, StudyLock, heartbeat_settings, open_storage, recover_interrupted

DATA = Path(__file__).parent / "data"
TESTS = Path(__file__).parent
SCRIPT = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny; from autotl.cli import main; main()"
# Fast heartbeats, so a dead worker's trial goes stale in seconds rather than minutes; the grace stays
# well above the interval, so that a live worker on a busy machine is not taken for dead.
FAST_HEARTBEAT = {"AUTOTL_HEARTBEAT_INTERVAL": "1", "AUTOTL_HEARTBEAT_GRACE": "8"}


@pytest.fixture
def image_data(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=10)


def start(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250", **(env or {})})


def run(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = start(*args, env=env)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(condition, timeout: float, what: str, procs=(), or_false: bool = False):
    """The condition's first true value; at the timeout an AssertionError, or False with ``or_false``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a process ended while waiting for {what}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    if or_false:
        return False
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stopped_in_a_trial(proc: subprocess.Popen, condition, timeout: float, what: str):
    """SIGSTOP ``proc`` at a moment ``condition()`` holds; its value, read again while ``proc`` is stopped.

    A trial can end between a look at the study and the signal: the look taken after the stop is the
    one that counts. A process caught outside the condition (between two trials) is continued and
    stopped again later. The caller continues it (SIGCONT) or kills it.
    """
    deadline = time.time() + timeout
    while True:
        wait_for(condition, max(1.0, deadline - time.time()), what, [proc])
        proc.send_signal(signal.SIGSTOP)
        try:
            value = condition()
        except Exception:  # stopped inside a write that keeps the study from being read (SQLite)
            value = None
        if value:
            return value
        proc.send_signal(signal.SIGCONT)
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s stopping the process at: {what}")


def sqlite_schema_ready(path: str) -> bool:
    """Whether the search has finished creating Optuna's tables in this SQLite file.

    Opening an RDBStorage runs CREATE TABLE for every table it does not see yet, so a test that opens
    the file while the search is still creating them races it ("table ... already exists"). Optuna
    stamps alembic_version last; a plain read-only look at it touches nothing.
    """
    if not Path(path).exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as con:
            return con.execute("select count(*) from alembic_version").fetchone()[0] > 0
    except sqlite3.OperationalError:  # no such table yet
        return False


def load(url: str, name: str) -> optuna.Study | None:
    if url.startswith("sqlite") and not sqlite_schema_ready(url.removeprefix("sqlite:///")):
        return None
    try:
        # autotl's own opening: it waits out SQLite writers and a search creating PostgreSQL's tables
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return None


def running_trial_of(url: str, name: str, pid: int):
    study = load(url, name)
    if study is None:
        return None
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if str(t.user_attrs.get("worker", "")).endswith(f":{pid}") and t.user_attrs.get("config")), None)


def search_args(data, out, weights, recipe="tiny-slow.yaml"):
    """tiny-slow: trials of about a second; tiny-long: several seconds, long enough to catch a worker in one.

    The kill tests stop a process (SIGSTOP) and look again which trial it holds before they kill or
    continue it (see stopped_in_a_trial), so a trial that ends at that moment misleads none of them.
    """
    return ["search", "--task", "image-classification", data, "--out", out, "--models", TINY,
            "--weights", f"{TINY}={weights}", "--recipe", DATA / recipe]


def started_trials(stderr: str) -> set[int]:
    return {int(n) for n in re.findall(r"^trial\s+(\d+) ", stderr, flags=re.M)}


def test_three_workers_share_one_postgres_study_and_a_killed_workers_trial_runs_again(
        postgres_url, image_data, tiny_weights, tmp_path):
    name = f"dist-{uuid.uuid4().hex[:8]}"
    storage = ["--storage", postgres_url, "--study", name]
    first = start(*search_args(image_data, tmp_path / "run", tiny_weights, "tiny-long.yaml"), *storage, "--trials", 6,
                  env=FAST_HEARTBEAT)
    # the description is written last, in one step: until then a worker refuses the half-recorded study
    wait_for(lambda: (s := load(postgres_url, name)) is not None and s.user_attrs.get("description"), 120,
             "the first worker to begin the study", [first])
    doomed = start("worker", *storage, "--trials", 6, env=FAST_HEARTBEAT)
    third = start("worker", *storage, "--trials", 6, env=FAST_HEARTBEAT)
    killed = stopped_in_a_trial(doomed, lambda: running_trial_of(postgres_url, name, doomed.pid), 300,
                                "the doomed worker running a trial")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    outputs = [proc.communicate(timeout=300) for proc in (first, third)]
    for proc, (_, stderr) in zip((first, third), outputs):
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr

    study = load(postgres_url, name)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    # With W workers, up to W - 1 over --trials: workers that check "done + running < 6" in the same
    # instant each start one, as Optuna has no atomic "create a trial if fewer than N" (docs/guide.md).
    # The killed worker completed nothing, so here the two surviving ones can end one over, never under.
    complete = states.count(TrialState.COMPLETE)
    surviving = 2
    assert 6 <= complete <= 6 + surviving - 1, [(t.number, t.state.name) for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    # the killed trial: failed by a live worker once its heartbeat went stale, then run again elsewhere
    assert study.trials[killed.number].state == TrialState.FAIL
    retry = next(t for t in trials if retry_of(t) == killed.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    assert not retry.user_attrs["worker"].endswith(f":{doomed.pid}")
    # no trial ran twice: the two surviving workers' logs name disjoint trials
    ran = [started_trials(stderr) for _, stderr in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    assert {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE} == \
        {f"{os.uname().nodename}:{first.pid}", f"{os.uname().nodename}:{third.pid}"}

    board = run("trials", *storage)
    assert board.returncode == 0, board.stderr
    notes = {r["number"]: r["note"] for r in json.loads(run("trials", *storage, "--json").stdout)}
    assert notes[killed.number] == ("its worker stopped sending heartbeats (killed or lost); "
                                    f"retried as trial {retry.number}")
    password = re.search(r"://[^:]+:([^@]+)@", postgres_url).group(1)
    for text in (board.stdout, board.stderr, *(o for pair in outputs for o in pair)):
        assert password not in text
    rows = json.loads(run("trials", *storage, "--json").stdout)
    assert sum(r["state"] == "COMPLETE" for r in rows) == complete


def trial_state(url: str, name: str, number: int) -> TrialState | None:
    study = load(url, name)
    return study.trials[number].state if study is not None else None


def test_a_worker_sigstopped_past_the_grace_period_drops_the_trial_failed_under_it_and_goes_on(
        postgres_url, image_data, tiny_weights, tmp_path):
    # A paused VM (SIGSTOP) sends no heartbeat: past the grace period another worker fails its trial
    # and queues it again. Continued, the paused worker must not die with "Internal error" when it
    # reports that trial: it says so, drops the result and goes on with the next trial.
    name = f"pause-{uuid.uuid4().hex[:8]}"
    storage = ["--storage", postgres_url, "--study", name]
    begun = run(*search_args(image_data, tmp_path / "run", tiny_weights, "tiny-long.yaml"), *storage, "--trials", 1,
                env=FAST_HEARTBEAT)
    assert begun.returncode == 0, begun.stderr[-3000:]
    # The paused worker goes on to 3 trials done; the other stops at 2, so it waits (and looks for
    # stale trials) as soon as the paused one holds the second, and leaves the paused one a next trial.
    paused = start("worker", *storage, "--trials", 3, env=FAST_HEARTBEAT)
    other = None
    try:
        for _ in range(3):
            cut = stopped_in_a_trial(paused, lambda: running_trial_of(postgres_url, name, paused.pid), 300,
                                     "the worker to be paused running a trial")
            other = other or start("worker", *storage, "--trials", 2, env=FAST_HEARTBEAT)
            try:  # the other worker fails it when it next looks: before its next trial, or while it waits
                failed = wait_for(lambda: trial_state(postgres_url, name, cut.number) == TrialState.FAIL, 300,
                                  "the other worker to fail the paused worker's trial", [other], or_false=True)
            finally:
                paused.send_signal(signal.SIGCONT)
            # Not failed: the stop caught the paused worker inside a database transaction, whose row
            # lock held the other worker's update back; continued, it lets the update land.
            if failed or wait_for(lambda: trial_state(postgres_url, name, cut.number) == TrialState.FAIL, 30,
                                  "the held-back update", or_false=True):
                break
        else:
            raise AssertionError("the paused worker's trial was never failed by the other worker")
        outputs = [proc.communicate(timeout=600) for proc in (other, paused)]
    finally:
        for proc in (other, paused):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, stderr) in zip((other, paused), outputs):
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr and "Internal error" not in stderr, stderr[-3000:]
    line = (f"Trial {cut.number} was failed by another worker while this one was paused or lost its heartbeat; "
            "its result is dropped and this worker goes on with the next trial")
    assert line in outputs[1][1], outputs[1][1][-3000:]
    after = outputs[1][1].split(line, 1)[1]
    assert started_trials(after) - {cut.number} and "Search stopped: " in after  # it ran a trial after

    study = load(postgres_url, name)
    failed = study.trials[cut.number]
    assert failed.state == TrialState.FAIL and "error" not in failed.user_attrs  # nothing recorded once failed
    retry = next(t for t in study.trials if retry_of(t) == cut.number)
    assert retry.state == TrialState.COMPLETE and retry.params == cut.params
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states.count(TrialState.COMPLETE) == 3


def test_workers_started_together_on_an_empty_database_all_open_it(postgres_url):
    # Every process that opens an empty database creates Optuna's tables; started at the same moment,
    # all but one used to fail with "relation already exists" / "duplicate key".
    import psycopg

    code = "import sys; from autotl.runs import open_storage; open_storage(sys.argv[1])"
    for _ in range(3):  # the race is likely, not certain, in any one round
        schema = f"empty_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"create schema {schema}")
        url = f"{postgres_url}?options=-csearch_path%3D{schema}"
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(5)]
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-2000:]
        with psycopg.connect(postgres_url) as con:
            tables = con.execute("select count(*) from information_schema.tables where table_schema = %s",
                                 (schema,)).fetchone()[0]
        assert tables >= 10


def test_sigkill_mid_trial_then_the_same_command_resumes_and_reruns_only_the_killed_trial(
        image_data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    args = [*search_args(image_data, out, tiny_weights, "tiny-long.yaml"), "--trials", 3]
    proc = start(*args)
    url = f"sqlite:///{out / 'study.db'}"

    def second_trial_running():
        study = load(url, "autotl")
        if study is None:
            return None
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return running_trial_of(url, "autotl", proc.pid) if done else None

    killed = stopped_in_a_trial(proc, second_trial_running, 300, "one complete trial and a second one running")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {t.number: (t.value, t.datetime_complete) for t in load(url, "autotl").trials
              if t.state == TrialState.COMPLETE}

    again = run(*args)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Trial {killed.number} was interrupted" in again.stderr
    study = load(url, "autotl")
    by_number = {t.number: t for t in study.trials}
    for number, (value, finished) in before.items():  # kept as they were, not run again
        assert by_number[number].state == TrialState.COMPLETE
        assert (by_number[number].value, by_number[number].datetime_complete) == (value, finished)
    assert by_number[killed.number].state == TrialState.FAIL
    assert by_number[killed.number].user_attrs["error"] == INTERRUPTED
    retry = next(t for t in study.trials if retry_of(t) == killed.number)
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert "error" not in retry.user_attrs
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    assert len(study.trials) == 4  # 3 complete + the killed one: nothing else ran
    rows = {r["number"]: r for r in json.loads(run("trials", out, "--json").stdout)}
    assert rows[killed.number]["note"] == f"{INTERRUPTED}; retried as trial {retry.number}"
    assert rows[retry.number]["note"] == f"retry of trial {killed.number}"


def test_a_second_search_on_a_run_folder_in_use_is_refused_with_what_to_use(image_data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    lock = StudyLock(out / "study.db")
    lock.acquire()
    try:
        result = run(*search_args(image_data, out, tiny_weights), "--trials", 1)
    finally:
        lock.release()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "in use by another autotl search" in lines[-1]
    assert "postgresql://" in lines[-1] and "Traceback" not in result.stderr


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # Optuna's retry readers
def test_recover_interrupted_fails_running_trials_and_queues_one_retry_each():
    study = optuna.create_study(storage="sqlite:///:memory:", direction="maximize")
    done = study.ask()
    done.suggest_float("lr", 1e-3, 1e-1, log=True)
    study.tell(done, 0.5)
    cut = study.ask()
    lr = cut.suggest_float("lr", 1e-3, 1e-1, log=True)
    cut.set_user_attr("config", {"lr": lr})
    cut.set_user_attr("weights", "trials/0001/model.safetensors")
    assert recover_interrupted(study) == [cut.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["error"] == INTERRUPTED
    assert trials[2].params == {"lr": lr} and retry_of(trials[2]) == cut.number
    # marked as Optuna marks a retry: its own helpers read it
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(trials[2]) == cut.number
    assert optuna.storages.RetryFailedTrialCallback.retry_history(trials[2]) == [cut.number]
    # the retry starts clean: the interrupted run's attributes (its weights above all) stay with it
    assert trials[2].user_attrs == {}
    assert recover_interrupted(study) == []  # nothing RUNNING any more


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_retried_trial_starts_clean_and_export_never_ships_the_interrupted_trials_weights(
        image_data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    searched = run(*search_args(image_data, out, tiny_weights), "--trials", 1)
    assert searched.returncode == 0, searched.stderr[-3000:]
    study = load(f"sqlite:///{out / 'study.db'}", "autotl")
    done = study.trials[0]
    # a trial killed after it saved and recorded its weights, before Optuna recorded it COMPLETE
    cut = study.ask(fixed_distributions=done.distributions)
    cut_weights = Path("trials") / f"{cut.number:04d}" / "model.safetensors"
    (out / cut_weights).parent.mkdir(parents=True)
    shutil.copyfile(out / done.user_attrs["weights"], out / cut_weights)
    for key, value in {"worker": "elsewhere:1", "config": done.user_attrs["config"], "weights": str(cut_weights),
                       "val_curve": [0.5, 0.75], "best_epoch": 2}.items():
        cut.set_user_attr(key, value)
    assert recover_interrupted(study) == [cut.number]

    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry_of(retry) == cut.number
    assert retry.params == study.trials[cut.number].params and retry.user_attrs == {}
    # the retry runs and scores below the keep-top: it saves no weights of its own
    running = study.ask()
    assert running.number == retry.number and "weights" not in study.trials[retry.number].user_attrs
    running.set_user_attr("config", done.user_attrs["config"])
    study.tell(running, 0.0)
    assert study.trials[retry.number].user_attrs == {"config": done.user_attrs["config"]}

    exported = run("export", out, "--trial", retry.number, "--out", tmp_path / "bundle", "--device", "cpu")
    assert exported.returncode == 6, exported.stderr[-3000:]
    assert f"the weights of trial {retry.number} were not kept" in exported.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bundle").exists() and "Traceback" not in exported.stderr


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_heartbeat_went_stale_is_retried_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTL_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("AUTOTL_HEARTBEAT_GRACE", "2")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"), direction="maximize")
    lost = study.ask()
    lr = lost.suggest_float("lr", 1e-3, 1e-1, log=True)
    for key, value in {"worker": "gone:1", "config": {"lr": lr}, "weights": "trials/0000/model.safetensors",
                       "error": "", "val_curve": [0.5]}.items():
        lost.set_user_attr(key, value)
    study._storage.record_heartbeat(lost._trial_id)  # its last heartbeat; then its worker is lost

    def failed_as_stale():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # what every worker does before each trial
        return study.trials[lost.number].state == TrialState.FAIL

    wait_for(failed_as_stale, 60, "the lost trial's heartbeat to go stale")
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry_of(retry) == lost.number
    assert retry.params == {"lr": lr} and retry.user_attrs == {}
    assert study.trials[lost.number].user_attrs["weights"] == "trials/0000/model.safetensors"  # kept where it was


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_one_database_error_does_not_stop_the_heartbeat(tmp_path, monkeypatch, caplog):
    import sqlalchemy.exc
    from optuna.storages import RDBStorage
    from optuna.storages._heartbeat import get_heartbeat_thread

    monkeypatch.setenv("AUTOTL_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("AUTOTL_HEARTBEAT_GRACE", "3")
    database = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{database}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real_record = RDBStorage.record_heartbeat
    calls = []

    def flaky_record(self, trial_id):  # the database drops the connection once, then answers again
        calls.append(trial_id)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats ...", {},
                                                  Exception("server closed the connection unexpectedly"))
        real_record(self, trial_id)

    monkeypatch.setattr(RDBStorage, "record_heartbeat", flaky_record)
    with caplog.at_level("WARNING", logger="autotl"):
        with get_heartbeat_thread(trial._trial_id, storage):  # Optuna's heartbeat thread, as optimize starts it
            wait_for(lambda: len(calls) >= 3, 60, "two heartbeats after the failed one")
    with sqlite3.connect(database) as con:
        beats = con.execute("select count(*) from trial_heartbeats where trial_id = ?", (trial._trial_id,)).fetchone()
    assert beats == (1,)
    assert storage._get_stale_trial_ids(study._study_id) == []  # alive: not taken for dead
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("autotl")]
    assert len([m for m in messages if "did not take this worker's heartbeat" in m]) == 1, messages
    assert "server closed the connection unexpectedly" in messages[0] and "trying again every 1s" in messages[0]
    assert any("heartbeat again" in m for m in messages[1:]), messages


def test_worker_refuses_sqlite_and_a_study_autotl_did_not_begin(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run("worker", "--storage", url, "--study", "s")
    assert result.returncode == 2 and "postgresql://" in result.stderr and "Traceback" not in result.stderr


def test_heartbeat_settings_come_from_the_environment_and_are_checked(monkeypatch):
    from autotl.errors import UsageError

    monkeypatch.setenv("AUTOTL_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("AUTOTL_HEARTBEAT_GRACE", "9")
    assert heartbeat_settings() == (2, 9)
    monkeypatch.setenv("AUTOTL_HEARTBEAT_GRACE", "2")
    with pytest.raises(UsageError, match="longer than"):
        heartbeat_settings()
    monkeypatch.setenv("AUTOTL_HEARTBEAT_GRACE", "soon")
    with pytest.raises(UsageError, match="AUTOTL_HEARTBEAT_GRACE"):
        heartbeat_settings()
