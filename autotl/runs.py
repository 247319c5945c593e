"""Where a search lives: its run folder, its Optuna storage and study, and what it records there."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from .errors import RunError, UsageError
from .files import write_json
from .records import (RETRY_HISTORY_ATTR, check_version, half_recorded, record_trial_error, retry_attrs,
                      retry_of)

RUN_FILE = "run.json"
DEFAULT_STUDY = "autotl"
# A worker records a heartbeat every HEARTBEAT_S seconds while it runs a trial; a RUNNING trial
# whose heartbeat is older than GRACE_S is failed by the next worker that looks, and retried once.
HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRY = 1
# Tries at opening a storage while other workers create its tables (see open_storage).
SCHEMA_TRIES = 10
log = logging.getLogger(__name__)


@dataclass
class RunLocation:
    storage_url: str
    study_name: str
    folder: Path | None = None

    def describe(self) -> str:
        return f"study {self.study_name!r} in {redact(self.storage_url)}"


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


HIDDEN = "***"
# query parameters that carry a password (postgresql://u@host/db?password=..., MySQL's passwd), any case
PASSWORD_PARAMETERS = ("password", "passwd")


def redact(url: str) -> str:
    """The storage URL without its password, for logs, leaderboards, run files and bundles.

    Hides the password of ``scheme://USER:PASSWORD@HOST`` (an empty user name too) up to the last
    ``@``, so a password that holds ``@`` is hidden whole (SQLAlchemy would read ``u:p@ss@host`` as
    password ``p`` at host ``ss@host``), and the value of every query parameter named ``password``.
    """
    split = _split_userinfo(url)
    if split is None:
        return url
    head, password, rest = split
    return f"{head}:{HIDDEN if password else ''}@{_redact_query(rest)}" if head else _redact_query(rest)


def _split_userinfo(url: str) -> tuple[str, str | None, str] | None:
    """(``scheme://USER``, the password, what follows its ``@``) of ``url``; ``("", None, url)`` when it
    holds no ``USER:PASSWORD@`` (a SQLite path such as ``sqlite:////a:b/c@d.db`` has none); None when
    it is no URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    userinfo, at, after = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and "/" not in user:
        return f"{scheme}://{user}", password, after
    return "", None, url


def _password_parameter(part: str) -> bool:
    key, equals, _ = part.partition("=")
    return bool(equals) and unquote(key).strip().lower() in PASSWORD_PARAMETERS


def _redact_query(text: str) -> str:
    """``text`` with the value of each password query parameter (``?password=...``) hidden."""
    path, question, query = text.partition("?")
    if not question:
        return text
    parts = [f"{part.partition('=')[0]}={HIDDEN}" if _password_parameter(part) else part for part in query.split("&")]
    return f"{path}?{'&'.join(parts)}"


def passwords(url: str) -> list[str]:
    """Every password ``url`` holds, as written and decoded, to scrub from a message that may echo one."""
    head, password, rest = _split_userinfo(url) or ("", None, "")
    found = [password or ""]
    found += [part.partition("=")[2] for part in rest.partition("?")[2].split("&") if _password_parameter(part)]
    try:  # how SQLAlchemy reads it, unless that is part of one found already (u:p@ss@host: "p")
        import sqlalchemy

        parsed = sqlalchemy.engine.make_url(url).password or ""
        if not any(parsed in p for p in found):
            found.append(parsed)
    except Exception:
        pass
    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def is_redacted(url: str) -> bool:
    """Whether ``url`` lost its password to :func:`redact` (as run.json stores it)."""
    return HIDDEN in url


def locate(run: str | None, storage: str | None, study: str | None) -> RunLocation:
    """Resolve a command's ``RUN`` folder or ``--storage``/``--study`` pair."""
    folder = Path(run) if run else None
    if storage:
        if study is None and folder is not None and (folder / RUN_FILE).is_file():
            try:  # the folder knows its study's name
                study = read_run_file(folder).get("study")
            except RunError:
                pass
        return RunLocation(storage, study or DEFAULT_STUDY, folder)
    if folder is None:
        raise UsageError("give a run folder (the --out of `autotl search`) or --storage URL --study NAME")
    meta = read_run_file(folder)
    if meta.get("storage_is_default", True):
        url = default_storage(folder)  # resolved anew: the folder may have moved since
    else:
        url = meta["storage"]
        if is_redacted(url):
            raise UsageError(f"the run in {folder} uses {url}, whose password is not stored: "
                             "give --storage URL (or set AUTOTL_STORAGE)")
    return RunLocation(url, study or meta.get("study", DEFAULT_STUDY), folder)


def read_run_file(folder: Path) -> dict:
    """The folder's ``run.json``; :class:`RunError` when it is missing or unreadable."""
    meta_file = folder / RUN_FILE
    if not meta_file.is_file():
        raise RunError(f"{folder} holds no autotl run ({RUN_FILE} is missing); give the --out folder of "
                       "`autotl search`, or --storage URL --study NAME")
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RunError(f"{meta_file} is unreadable ({exc}); restore it or use --storage URL --study NAME") from exc


def write_run_file(location: RunLocation, default: bool) -> None:
    if location.folder is not None:
        write_json(location.folder / RUN_FILE, {
            "storage": None if default else redact(location.storage_url),
            "storage_is_default": default,
            "study": location.study_name,
        })


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: AUTOTL_HEARTBEAT_INTERVAL / AUTOTL_HEARTBEAT_GRACE or the defaults."""
    values = []
    for name, default in (("AUTOTL_HEARTBEAT_INTERVAL", HEARTBEAT_S), ("AUTOTL_HEARTBEAT_GRACE", GRACE_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            raise UsageError(f"{name}={text!r} is not a whole number of seconds; set it to e.g. {default}") from None
        if value < 1:
            raise UsageError(f"{name}={text!r} must be at least 1 (seconds)")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise UsageError(f"AUTOTL_HEARTBEAT_GRACE ({grace}s) must be longer than AUTOTL_HEARTBEAT_INTERVAL "
                         f"({interval}s), or live workers are taken for dead")
    return interval, grace


class Storage(RDBStorage):
    """Optuna's RDB storage, whose heartbeat outlives a transient database error.

    Optuna records a running trial's heartbeat from a thread that ends at its first exception, so
    one dropped connection would stop the heartbeat for good and have a live worker's trial failed
    as dead. Here a heartbeat the database does not take is reported once and tried again at the
    next beat; the trial is only lost if the database stays out of reach for the grace period.
    """

    _heartbeat_lost = False

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not self._heartbeat_lost:
                self._heartbeat_lost = True
                text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
                for password in passwords(self.url):
                    text = text.replace(password, HIDDEN)
                log.warning(f"Warning: the database did not take this worker's heartbeat ({text}); trying again "
                            f"every {self.heartbeat_interval}s. Unless it answers within {self.grace_period}s, "
                            "other workers fail and retry this worker's trial")
            return
        if self._heartbeat_lost:
            self._heartbeat_lost = False
            log.warning("The database takes this worker's heartbeat again")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a trial whose process died is failed and retried once, clean."""
    interval, grace = heartbeat_settings()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        for attempt in range(SCHEMA_TRIES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return Storage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=interval,
                        grace_period=grace,
                        heartbeat_stale_trial_callback=queue_retry,
                    )
            except Exception as exc:
                # Workers started together on an empty database all create Optuna's tables; all but
                # one fail with "already exists" / "duplicate key". The tables are there a moment
                # later, and the next try finds them.
                if attempt + 1 == SCHEMA_TRIES or not _schema_race(exc):
                    raise
                time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
    except ModuleNotFoundError as exc:  # the URL's database driver is not installed
        raise UsageError(f"cannot open storage {redact(url)}: its database driver {exc.name!r} is not installed; "
                         "for PostgreSQL: pip install 'autotl[postgres]'") from exc
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise UsageError(f"cannot open storage {redact(url)}: {storage_problem(url, exc)}") from exc


def _schema_race(exc: Exception) -> bool:
    """Whether ``exc`` is another process creating Optuna's tables at the same moment as this one."""
    text = str(exc).lower()
    return any(words in text for words in ("already exists", "duplicate key", "unique constraint failed"))


def storage_problem(url: str, exc: Exception) -> str:
    """Why storage ``url`` cannot be opened, and what to do, in one line that never holds the password."""
    import sqlalchemy.exc

    missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
    if isinstance(missing, ModuleNotFoundError):
        name = (missing.name or "").split(".")[0]
        packages = {"psycopg": "'autotl[postgres]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
        package = packages.get(name, name)
        return f"its database driver {name!r} is not installed; install it: pip install {package}"
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else exc.__class__.__name__
    for password in passwords(url):
        first = first.replace(password, HIDDEN)
    forms = "give sqlite:///FILE or postgresql://USER:PASSWORD@HOST:PORT/DB"
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError):
        return f"unknown kind of database {url.split(':', 1)[0]!r}; {forms}"
    if isinstance(exc, sqlalchemy.exc.ArgumentError):  # an unparsable URL
        return f"{first.rstrip('.')}; {forms}"
    return f"{first}; check the URL, that the server runs and can be reached, and the credentials"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other storages and in-memory SQLite)."""
    match = re.match(r"sqlite(\+\w+)?:///(.+)", url)
    if not match or match.group(2).startswith(":memory:"):
        return None
    return Path(match.group(2).split("?", 1)[0])


class StudyLock:
    """One process at a time on a SQLite study: a second one is refused with what to use instead.

    SQLite serialises writers with file locks that several processes contend for ("database is
    locked"), and a RUNNING trial in it can only be judged dead when no process holds the study.
    The lock is an ``fcntl`` lock on ``<database>.lock``: the kernel releases it when its process
    dies, even by SIGKILL, so a killed search never leaves a stale lock behind.
    """

    def __init__(self, database: Path):
        self.path = Path(str(database) + ".lock")
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(
                f"{self.path.parent} is in use by another autotl search ({holder}); one SQLite study takes one "
                "process at a time. Wait for it, or run several workers on a PostgreSQL study: "
                "autotl search ... --storage postgresql://USER:PASSWORD@HOST/DB --study NAME (docs/guide.md)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


INTERRUPTED = "interrupted: the process running it stopped before the trial finished (killed or crashed)"


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of a study no live process holds, and queue each for one retry.

    Only for a study under a ``StudyLock`` (nobody else can be running its trials). Shared RDB
    studies get the same treatment from heartbeats instead, after the grace period.
    """
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record_trial_error(storage, trial._trial_id, INTERRUPTED)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            continue
        failed.append(trial.number)
        queue_retry(study, trial)
    return failed


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue an interrupted trial to run again, once, and clean: with its parameters and nothing else.

    Both kinds of interruption come here: a killed local search (:func:`recover_interrupted`) and a
    worker whose heartbeat went stale (the storage's ``heartbeat_stale_trial_callback``). The retry
    is marked as Optuna's ``RetryHeartbeatStaleTrialCallback`` marks one (:func:`autotl.records.retry_attrs`),
    so ``retried_as`` and Optuna's own helpers read it, but unlike that callback it takes none of the
    interrupted trial's user attributes: its weights path, error, worker, curves and costs belong to
    the run that was cut, and a retry that inherited ``weights`` would be exported with that run's
    weights. False when the trial was retried enough.
    """
    system_attrs = retry_attrs(trial)
    if len(system_attrs[RETRY_HISTORY_ATTR]) > MAX_RETRY:
        return False
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, system_attrs=system_attrs))
    return True


def retried_as(study: optuna.Study) -> dict[int, int]:
    """{failed trial number: the number of the trial that retried it}."""
    return {retry_of(t): t.number for t in study.get_trials(deepcopy=False) if retry_of(t) is not None}


def load_study(location: RunLocation) -> optuna.Study:
    """The study at ``location``; :class:`RunError` when it is missing or half-recorded."""
    storage = open_storage(location.storage_url)
    try:
        study = optuna.load_study(study_name=location.study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise RunError(f"no study {location.study_name!r} in {redact(location.storage_url)}"
                       + (f"; studies there: {', '.join(names)}" if names else "; it holds no study")) from None
    check_version(study.user_attrs, location.describe())
    if half_recorded(study.user_attrs):
        raise RunError(f"{location.describe()} is half-recorded: the `autotl search` that began it was interrupted "
                       "before it recorded the whole study (or is recording it now); run that search again (the same "
                       "command) to record it, then retry")
    return study
