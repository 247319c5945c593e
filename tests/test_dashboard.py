"""`optuna-dashboard sqlite:///RUN/study.db` (the README's one command) serves a run's study."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

from autotl.runs import default_storage, open_storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_a_run_study(tmp_path):
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed: pip install 'autotl[dashboard]' (the test extra has it)"
    run = tmp_path / "run"
    run.mkdir()
    url = default_storage(run)  # what `autotl search --out run` creates, through the same storage settings
    study = optuna.create_study(study_name="autotl", storage=open_storage(url), direction="maximize")
    study.set_user_attr("task", "image-classification")
    for lr, value in ((1e-3, 0.8), (5e-3, 0.9)):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.set_user_attr("config", {"model": "mobilenetv2_100", "lr": lr})
        study.tell(trial, value)
    assert url == f"sqlite:///{(run / 'study.db').resolve()}"

    port = free_port()
    process = subprocess.Popen([dashboard, url, "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"optuna-dashboard did not serve {url}: {process.communicate()[0][-2000:]}")
                time.sleep(0.5)
        summaries = studies["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["autotl"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}?after=0")
        assert [t["values"] for t in detail["trials"]] == [[0.8], [0.9]]
        assert {"key": "task", "value": "image-classification"} in detail["user_attrs"]
    finally:
        process.terminate()
        process.wait(timeout=20)
