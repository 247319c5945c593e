"""Shared fixtures: the tiny timm network, its weights, and tiny synthetic image folders.

Nothing here downloads anything: the tiny network is registered with timm by ``tiny.py`` and its
"pretrained" weights are written to a temporary file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import tiny  # noqa: E402  (registers autotl_tiny_effnet with timm)


def pytest_configure(config):
    """Searches in tests (and the processes they start) keep frozen-prefix features in a throwaway folder."""
    import os
    import tempfile

    if "AUTOTL_CACHE_DIR" not in os.environ:
        os.environ["AUTOTL_CACHE_DIR"] = config._autotl_cache_dir = tempfile.mkdtemp(prefix="autotl-test-cache-")


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_autotl_cache_dir", None):
        shutil.rmtree(config._autotl_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A safetensors checkpoint of the tiny network with a 1000-class head, as a user would give."""
    return tiny.save_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", seed=1)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_weights):
    """The tiny network as a timm-family backbone whose weights come from ``tiny_weights``."""
    from autotl_timm import TimmFamily

    return TimmFamily().get(tiny.TINY, weights=str(tiny_weights))


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """Three classes (dark, light, striped), 12 images each in train/ and test/, grey and RGBA."""
    return tiny.make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server on loopback: AUTOTL_TEST_POSTGRES_URL (`.ci/run` starts one), or our own.

    Where no server can be had the tests that need one are skipped with the reason, loudly; with
    AUTOTL_REQUIRE_POSTGRES=1 (CI sets it) they fail instead, so CI never skips them.
    """
    import os

    import postgres_server

    url = os.environ.get("AUTOTL_TEST_POSTGRES_URL")
    if url:
        postgres_server.wait_until_ready(url)
        yield url
        return
    import shutil
    import tempfile

    # Not under pytest's tmp folder: as root the server runs as `postgres`, which cannot enter it.
    folder = Path(tempfile.mkdtemp(prefix="autotl-test-postgres-"))
    try:
        url = postgres_server.start(folder)
    except postgres_server.ServerUnavailable as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("AUTOTL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AUTOTL_REQUIRE_POSTGRES=1 but no PostgreSQL server could be started: {exc}")
        pytest.skip(f"NO POSTGRESQL SERVER: the distributed-search tests did not run ({exc})")
    try:
        yield url
    finally:
        postgres_server.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)
