"""Security: nothing unpickles untrusted files, no remote code runs, storage passwords stay secret.

The source scan reads every module of the core and of the built-in plugins with ``ast`` (not with a
regular expression, so comments and docstrings that mention ``torch.load`` do not count) and refuses
the calls that can run code from a file. The password tests run a real search against a storage
URL that holds a password and look for it in every output and every file the run wrote.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autotl.cli import cli
from autotl.runs import redact
from tiny import TINY, make_image_folder

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "autotl").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
RECIPE = ROOT / "tests" / "data" / "tiny-image.yaml"
SECRET = "pw-Zx81-secret"

#: modules whose loading functions unpickle (run code from) a file.
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that could run code from a file or from the hub; empty when none."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in {a.name for a in node.names}:
            found.append(f"{where}: from torch import load (call torch.load with weights_only=True)")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if func.endswith("torch.load") and not _is_true(keywords.get("weights_only", ast.Constant(None))):
                found.append(f"{where}: {func}(...) without weights_only=True")
            if func.startswith("yaml.") and func.split(".", 1)[1] in UNSAFE_YAML:
                found.append(f"{where}: {func}(...); use yaml.safe_load")
            if func in ("eval", "exec"):
                found.append(f"{where}: {func}(...)")
            if "trust_remote_code" in keywords and not _is_false(keywords["trust_remote_code"]):
                found.append(f"{where}: trust_remote_code={ast.unparse(keywords['trust_remote_code'])}")
            if "allow_pickle" in keywords and not _is_false(keywords["allow_pickle"]):
                found.append(f"{where}: allow_pickle={ast.unparse(keywords['allow_pickle'])}")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not _is_false(value):
                    found.append(f"{where}: {{'trust_remote_code': {ast.unparse(value)}}}")
    return found


def test_no_module_of_the_core_or_the_builtin_plugins_can_run_code_from_a_file():
    assert len(SOURCES) > 20
    problems = [problem for path in SOURCES
                for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(path)",
    "import torch\nstate = torch.load(path, weights_only=False)",
    "import pickle\nstate = pickle.load(f)",
    "from joblib import load",
    "from torch import load",
    "import yaml\nraw = yaml.load(text, Loader=yaml.Loader)",
    "model = AutoModel.from_pretrained(name, trust_remote_code=True)",
    "model = AutoModel.from_pretrained(name, trust_remote_code=user_says)",
    "kwargs = {'trust_remote_code': True}",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
])
def test_the_scan_catches_each_unsafe_call(snippet):
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(path, map_location='cpu', weights_only=True)",
    "import yaml\nraw = yaml.safe_load(text)",
    "model = AutoModel.from_pretrained(name, trust_remote_code=False)",
    "# torch.load(path) in a comment\n'pickle.load in a string'",
])
def test_the_scan_passes_the_safe_forms(snippet):
    assert unsafe_calls(snippet) == []


# -- storage passwords ---------------------------------------------------------------------------------

#: (a storage URL whose password is SECRET, or holds it, and how it is shown): every form a user can write.
URL_FORMS = [
    (f"postgresql://autotl:{SECRET}@db.example:5432/runs", "postgresql://autotl:***@db.example:5432/runs"),
    (f"postgresql://:{SECRET}@db.example:5432/runs", "postgresql://:***@db.example:5432/runs"),
    (f"postgresql://autotl@db.example:5432/runs?password={SECRET}", "postgresql://autotl@db.example:5432/runs?password=***"),
    (f"postgresql://autotl@db.example/runs?sslmode=prefer&PassWord={SECRET}",
     "postgresql://autotl@db.example/runs?sslmode=prefer&PassWord=***"),
    (f"postgresql://autotl:Qv7@{SECRET}@db.example:5432/runs", "postgresql://autotl:***@db.example:5432/runs"),
]


def test_redact_hides_the_password_of_every_url_form():
    for url in (f"postgresql://u:{SECRET}@db:5432/x", f"postgresql+psycopg2://u:{SECRET}@db/x",
                f"mysql://user:{SECRET}@127.0.0.1/db?charset=utf8", f"sqlite://u:{SECRET}@//tmp/study.db",
                f"postgresql://u:{SECRET}@/x?host=/var/run/postgresql", f"postgresql://u:a%40{SECRET}@db/x",
                f"postgresql://u:{SECRET}@db/x?password={SECRET}", f"mysql://u@db/x?passwd={SECRET}"):
        assert SECRET not in redact(url) and "***" in redact(url), url
    for url, shown in URL_FORMS:
        assert redact(url) == shown, url


@pytest.mark.parametrize("url, shown", URL_FORMS, ids=["user-password", "no-user", "query", "query-any-case",
                                                       "password-with-at"])
def test_a_storage_password_never_reaches_output_logs_run_files_or_the_leaderboard(tmp_path, tiny_weights,
                                                                                    monkeypatch, url, shown):
    """A real search, and every command on its run, given a PostgreSQL URL with a password.

    Only the database connection itself is swapped for a SQLite file (no PostgreSQL server here): every
    message, file and table autotl writes sees the URL with its password.
    """
    import autotl.runs
    import autotl.controller

    database = tmp_path / "stand-in.db"
    real_open = autotl.runs.open_storage
    opened = []

    def open_storage(given):
        assert given == url
        opened.append(given)
        return real_open(f"sqlite:///{database}")

    monkeypatch.setattr(autotl.runs, "open_storage", open_storage)
    monkeypatch.setattr(autotl.controller, "open_storage", open_storage)
    data = make_image_folder(tmp_path / "data", classes=("dark", "light"), per_class=6, size=16)
    out = tmp_path / "run"
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, [str(a) for a in args], prog_name="autotl")
        assert SECRET not in result.output, f"the password reached the output of {args[0]}:\n{result.output}"
        return result

    searched = run("search", data, "--task", "image-classification", "--out", out, "--recipe", RECIPE,
                   "--trials", "1", "--device", "cpu", "--models", TINY, "--weights", f"{TINY}={tiny_weights}",
                   "--storage", url, "--study", "s1")
    assert searched.exit_code == 0, searched.output
    assert opened, "the search did not open the storage it was given"
    assert shown in searched.output  # progress and leaderboard title

    listed = run("trials", out, "--storage", url, "--study", "s1")
    assert listed.exit_code == 0 and shown in listed.output.replace("\n", "") and "leaderboard" in listed.output
    as_json = run("trials", out, "--storage", url, "--study", "s1", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)[0]["state"] == "COMPLETE"
    assert run("best", out, "--storage", url, "--study", "s1", "--json").exit_code == 0
    exported = run("export", out, "--storage", url, "--study", "s1", "--out", tmp_path / "bundle", "--device", "cpu")
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "bundle" / "config.json").read_text())["search"]["storage"] == shown
    reported = run("report", out, "--storage", url, "--study", "s1", "--out", tmp_path / "report.html",
                   "--device", "cpu")
    assert reported.exit_code == 0, reported.output
    assert shown in (tmp_path / "report.html").read_text(encoding="utf-8").replace("&amp;", "&")

    # the run folder knows the storage, not its password: commands on the folder ask for the URL again
    assert json.loads((out / "run.json").read_text())["storage"] == shown
    again = run("trials", out)
    assert again.exit_code == 2 and "password is not stored" in again.output and "--storage URL" in again.output

    for path in [*out.rglob("*"), *(tmp_path / "bundle").rglob("*"), tmp_path / "report.html", database]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the password is stored in {path}"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://u:{SECRET}@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
    (f"postgresql://:{SECRET}@127.0.0.1:1/db", "postgresql://:***@127.0.0.1:1/db"),
    (f"postgresql://u@127.0.0.1:1/db?password={SECRET}", "postgresql://u@127.0.0.1:1/db?password=***"),
    (f"postgresql://u:{SECRET}@127.0.0.1:1/db?PASSWORD={SECRET}", "postgresql://u:***@127.0.0.1:1/db?PASSWORD=***"),
])
def test_a_wrong_password_is_not_echoed_back_by_the_error(tmp_path, url, shown):
    result = CliRunner().invoke(cli, ["trials", "--storage", url], prog_name="autotl")
    assert result.exit_code == 2
    assert SECRET not in result.output and shown in result.output
