"""Write the committed run folder ``tests/data/run-6f673bc/``: a tiny search made by autotl at 6f673bc.

The folder holds what an older autotl wrote (no record version in the study), so that
``tests/test_old_run_folder.py`` can check that the current code still opens it. Regenerate it with the
ORIGINAL code, never with the current one: from outside any checkout (so that ``autotl`` is the installed
one), with the environment of a checkout of 6f673bc::

    cd /tmp && /path/to/checkout-at-6f673bc/.venv/bin/python /path/to/tests/data/make_old_run.py OUT_FOLDER

then replace ``tests/data/run-6f673bc`` with OUT_FOLDER/run. The data is ``tiny.make_image_folder(root,
per_class=10)``, which is deterministic: the tests rebuild it and pass it with ``--data``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: tiny.py registers the tiny timm network

import tiny  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from autotl.cli import cli  # noqa: E402


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    data = tiny.make_image_folder(target / "data", per_class=10)
    weights = tiny.save_tiny_weights(target / "tiny.safetensors")
    args = ["search", "--task", "image-classification", str(data), "--out", str(target / "run"),
            "--recipe", str(HERE / "tiny-image.yaml"), "--models", tiny.TINY,
            "--weights", f"{tiny.TINY}={weights}", "--trials", "3", "--keep-top", "2", "--scratch-baseline",
            "--no-cache"]
    result = CliRunner().invoke(cli, args)
    print(result.output)
    if result.exit_code != 0:
        raise SystemExit(result.exit_code)
    for leftover in (target / "run").glob("*.lock"):
        leftover.unlink()
    shutil.rmtree(target / "data")
    (target / "tiny.safetensors").unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
