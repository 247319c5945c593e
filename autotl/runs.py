"""Where a search lives: its run folder, its Optuna storage and study, and what it records there."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from .errors import RunError, UsageError
from .files import write_json

RUN_FILE = "run.json"
DEFAULT_STUDY = "autotl"
HEARTBEAT_S = 30
GRACE_S = 120


@dataclass
class RunLocation:
    storage_url: str
    study_name: str
    folder: Path | None = None

    def describe(self) -> str:
        return f"study {self.study_name!r} in {redact(self.storage_url)}"


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for logs and leaderboards."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def locate(run: str | None, storage: str | None, study: str | None) -> RunLocation:
    """Resolve a command's ``RUN`` folder or ``--storage``/``--study`` pair."""
    folder = Path(run) if run else None
    if storage:
        return RunLocation(storage, study or DEFAULT_STUDY, folder)
    if folder is None:
        raise UsageError("give a run folder (the --out of `autotl search`) or --storage URL --study NAME")
    meta_file = folder / RUN_FILE
    if not meta_file.is_file():
        raise RunError(f"{folder} holds no autotl run ({RUN_FILE} is missing); give the --out folder of "
                       "`autotl search`, or --storage URL --study NAME")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RunError(f"{meta_file} is unreadable ({exc}); restore it or use --storage URL --study NAME") from exc
    if meta.get("storage_is_default", True):
        url = default_storage(folder)  # resolved anew: the folder may have moved since
    else:
        url = meta["storage"]
        if "***@" in url:
            raise UsageError(f"the run in {folder} uses {url}, whose password is not stored: "
                             "give --storage URL (or set AUTOTL_STORAGE)")
    return RunLocation(url, study or meta.get("study", DEFAULT_STUDY), folder)


def write_run_file(location: RunLocation, default: bool) -> None:
    if location.folder is not None:
        write_json(location.folder / RUN_FILE, {
            "storage": None if default else redact(location.storage_url),
            "storage_is_default": default,
            "study": location.study_name,
        })


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a trial whose process died is failed and retried once."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"cannot open storage {redact(url)}: {first}; check the URL, the server and its credentials") from exc


def load_study(location: RunLocation) -> optuna.Study:
    storage = open_storage(location.storage_url)
    try:
        return optuna.load_study(study_name=location.study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise RunError(f"no study {location.study_name!r} in {redact(location.storage_url)}"
                       + (f"; studies there: {', '.join(names)}" if names else "; it holds no study")) from None
