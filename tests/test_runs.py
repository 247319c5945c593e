"""Run folders and storage URLs: what `trials` and `best` find, and what never shows a password."""

from __future__ import annotations

import json

import pytest

from autotl.errors import RunError, UsageError
from autotl.runs import RUN_FILE, RunLocation, default_storage, locate, redact, write_run_file


def test_redact_hides_the_password_and_keeps_the_rest():
    assert redact("postgresql://autotl:s3cret@db.example:5432/runs") == "postgresql://autotl:***@db.example:5432/runs"
    assert redact("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"
    assert redact("sqlite:////tmp/a:b/c@d/study.db") == "sqlite:////tmp/a:b/c@d/study.db"  # a path, no password
    assert redact("postgresql://u:@db/runs") == "postgresql://u:@db/runs"
    assert redact("postgresql://u:p@ss@db/runs?sslmode=require&Password=x") == \
        "postgresql://u:***@db/runs?sslmode=require&Password=***"


def test_a_run_file_whose_url_had_a_query_password_asks_for_the_url_again(tmp_path):
    url = "postgresql://autotl@db.example/runs?password=s3cret"
    write_run_file(RunLocation(url, "mine", tmp_path), default=False)
    assert "s3cret" not in (tmp_path / RUN_FILE).read_text()
    with pytest.raises(UsageError, match="password is not stored"):
        locate(str(tmp_path), None, None)


def test_a_run_folder_with_the_default_storage_is_found_even_after_it_moved(tmp_path):
    write_run_file(RunLocation(default_storage(tmp_path / "old"), "autotl", tmp_path / "new"), default=True)
    location = locate(str(tmp_path / "new"), None, None)
    assert location.storage_url == default_storage(tmp_path / "new")
    assert location.study_name == "autotl"


def test_the_run_file_never_stores_a_storage_password(tmp_path):
    url = "postgresql://autotl:s3cret@db.example/runs"
    write_run_file(RunLocation(url, "mine", tmp_path), default=False)
    assert "s3cret" not in (tmp_path / RUN_FILE).read_text()
    with pytest.raises(UsageError, match="--storage"):
        locate(str(tmp_path), None, None)
    assert locate(str(tmp_path), url, "mine").storage_url == url


def test_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="run.json"):
        locate(str(tmp_path), None, None)
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        locate(str(tmp_path), None, None)


def test_the_run_file_names_the_study(tmp_path):
    write_run_file(RunLocation(default_storage(tmp_path), "exp-3", tmp_path), default=True)
    assert json.loads((tmp_path / RUN_FILE).read_text())["study"] == "exp-3"
    assert locate(str(tmp_path), None, None).study_name == "exp-3"


def test_a_run_folder_with_storage_given_takes_the_study_name_from_its_run_file(tmp_path):
    url = "postgresql://u:secret@db/autotl"
    write_run_file(RunLocation(url, "big", tmp_path), default=False)
    assert locate(str(tmp_path), url, None).study_name == "big"
    assert locate(str(tmp_path), url, "other").study_name == "other"
    assert locate(None, url, None).study_name == "autotl"
