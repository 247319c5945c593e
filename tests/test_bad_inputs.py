"""Bad input, table-driven, through the real command line.

Every case builds its input in ``tmp_path`` and runs ``autotl``. It must end with the documented exit
code and one ``Error:`` line on stderr that names the problem (file, line, option or field) and the
fix, or, for a file that can be skipped, with a reported skip line naming the file and why; never a
traceback, and never at the cost of a completed trial (the cases that resume a run check that its
completed trial is still there, unchanged).

Most cases fail before any training. The cases that need a run copy a one-trial run of the tiny
network (``tiny.py``) made once per session. Cases where a library could print past the command's
error handling (a database driver, the hub client) run ``autotl`` in a fresh process.

``AUTOTL_BAD_INPUT_TABLE=FILE pytest tests/test_bad_inputs.py`` also writes the cases as a Markdown
table (case, input, exit code, what the user sees) to FILE.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from PIL import Image

import tinybert
from autotl.cli import cli
from autotl.errors import EXIT_CODES
from tiny import TINY, make_image_folder

TESTS = Path(__file__).resolve().parent
IMAGE_RECIPE = TESTS / "data" / "tiny-image.yaml"
TEXT_RECIPE = TESTS / "data" / "text" / "tiny-text.yaml"
SECRET = "s3cr3t-pw"
#: stderr lines a failing search may print before its error: it got that far.
PROGRESS = ("Loading ", "Data: ")
#: a fresh process that knows the tiny timm network, as the in-process cases do.
FRESH = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny; from autotl.cli import main; main()"

USAGE, DATA, MODEL, RUN, BUNDLE = 2, 3, 4, 6, 7


# -- what a case can use ----------------------------------------------------------------------------------

@dataclass
class Ctx:
    """The case's temporary folder and, built on first use, the shared fixtures."""

    tmp: Path
    request: Any
    copied_run: Path | None = None

    @property
    def tiny_weights(self) -> Path:
        return self.request.getfixturevalue("tiny_weights")

    @property
    def text_model(self) -> str:
        return self.request.getfixturevalue("text_model")

    def path(self, name: str) -> Path:
        return self.tmp / name

    def copy_run(self) -> Path:
        """A copy of the session's finished run: ``data/``, ``run/`` (one completed trial), ``bundle/``."""
        self.copied_run = self.tmp / "r"
        shutil.copytree(self.request.getfixturevalue("finished_run"), self.copied_run)
        return self.copied_run


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what the user gave, for the table
    make: Callable[[Ctx], list]  # builds the input under ctx.tmp; returns the command's arguments
    code: int
    says: tuple  # fragments of the error (or skip) line; a tuple inside: any one of its fragments
    skip: bool = False  # a reported skip: the command succeeds and lists the file with its reason
    fresh_process: bool = False
    env: dict = field(default_factory=dict)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    check: Callable[[Ctx], None] | None = None  # anything else to assert afterwards


# -- inputs -----------------------------------------------------------------------------------------------

def image_search(ctx: Ctx, data, *extra, out=None, recipe=IMAGE_RECIPE, trials="1", models=None) -> list:
    """`autotl search` on the tiny recipe with the tiny network and its local weights."""
    models = models if models is not None else ("--models", TINY, "--weights", f"{TINY}={ctx.tiny_weights}")
    return ["search", data, "--task", "image-classification", "--out", out or ctx.path("run"), "--recipe", recipe,
            "--trials", trials, "--device", "cpu", *models, *extra]


def text_search(ctx: Ctx, data, *extra, recipe=TEXT_RECIPE, models=None) -> list:
    models = models if models is not None else ("--models", ctx.text_model)
    return ["search", data, "--task", "text-classification", "--out", ctx.path("run"), "--recipe", recipe,
            "--trials", "1", "--device", "cpu", *models, *extra]


def resume(ctx: Ctx, *extra, models: tuple | None = None) -> list:
    """The command that made the session's run, on a copy of it: resumes it (it asks for 1 trial, has 1)."""
    root = ctx.copy_run()
    models = models if models is not None else ("--models", TINY, "--weights", f"{TINY}={ctx.tiny_weights}")
    return ["search", root / "data", "--task", "image-classification", "--out", root / "run", "--recipe",
            IMAGE_RECIPE, "--trials", "1", "--device", "cpu", *models, *extra]


def images(ctx: Ctx, classes=("dark", "light"), per_class: int = 3, splits=("train",)) -> Path:
    return make_image_folder(ctx.path("data"), classes=classes, per_class=per_class, splits=splits, size=16)


def png_bytes(size=(24, 24), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` pixels (CRC fixed): a decompression bomb."""
    data = bytearray(png_bytes((1, 1)))
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def unknown_class_in_test(ctx: Ctx) -> list:
    data = images(ctx, splits=("train", "test"))
    (data / "test" / "zebra").mkdir()
    (data / "test" / "zebra" / "z.png").write_bytes(png_bytes())
    return image_search(ctx, data)


def class_without_images(ctx: Ctx) -> list:
    data = images(ctx)
    (data / "train" / "empty").mkdir()
    (data / "train" / "empty" / "notes.txt").write_text("hi")
    return image_search(ctx, data)


def data_changed_on_resume(ctx: Ctx) -> list:
    args = resume(ctx)
    (ctx.copied_run / "data" / "train" / "dark" / "new.png").write_bytes(png_bytes())
    return args


def corrupt_weights(ctx: Ctx) -> list:
    path = ctx.path("w.safetensors")
    path.write_bytes(np.random.default_rng(0).bytes(100))
    return image_search(ctx, images(ctx), models=("--models", TINY, "--weights", f"{TINY}={path}"))


def resume_with_file(name: str, write: Callable[[Path], None]) -> Callable[[Ctx], list]:
    """Resume the run after ``write`` put ``train/dark/<name>`` into its data folder."""
    def make(ctx: Ctx) -> list:
        args = resume(ctx)
        write(ctx.copied_run / "data" / "train" / "dark" / name)
        return args
    return make


def symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)  # loop.png -> loop.png
    os.symlink("..", path.parent / "again")  # a folder link back up: must not be walked forever


def text_files(ctx: Ctx, **files: str | bytes) -> Path:
    folder = ctx.path("data")
    folder.mkdir()
    for name, content in files.items():
        name = name.replace("_", ".", 1)
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content, encoding="utf-8")
    return folder


ROWS = "".join(f"{'good tea' if i % 2 else 'bad tea'} {i},{'pos' if i % 2 else 'neg'}\n" for i in range(8))
JSONL_ROWS = "".join(f'{{"text": "tea {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(8))


def a_file(ctx: Ctx, name: str, content: str = "") -> Path:
    path = ctx.path(name)
    path.write_text(content)
    return path


def recipe(ctx: Ctx, text: str) -> Path:
    return a_file(ctx, "recipe.yaml", text)


def tampered_bundle(ctx: Ctx) -> Path:
    bundle = ctx.copy_run() / "bundle"
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one byte of the last tensor
    weights.write_bytes(bytes(data))
    return bundle


class Evil:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def malicious_weights(ctx: Ctx) -> list:
    import torch

    path = ctx.path("weights.pt")
    torch.save({"conv_stem.weight": Evil(ctx.path("pwned"))}, str(path))
    return image_search(ctx, images(ctx), models=("--models", TINY, "--weights", f"{TINY}={path}"))


def no_code_ran(ctx: Ctx) -> None:
    assert not ctx.path("pwned").exists(), "unpickling the weights file ran code"


def no_run_folder(ctx: Ctx) -> None:
    assert not ctx.path("run").exists(), "a failed command left a run folder behind"


def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)



def bytes_named_file(ctx: Ctx) -> list:
    """Resume the run after a PNG whose file name is not UTF-8 (Latin-1 caf\xe9.png) went into train/dark/."""
    args = resume(ctx)
    with open(os.fsencode(ctx.copied_run / "data" / "train" / "dark") + b"/caf\xe9.png", "wb") as handle:
        handle.write(png_bytes())
    return args


def bytes_named_class(ctx: Ctx) -> list:
    data = images(ctx)
    folder = os.fsencode(data / "train") + b"/caf\xe9"
    os.mkdir(folder)
    for i in range(3):
        with open(folder + f"/{i}.png".encode(), "wb") as handle:
            handle.write(png_bytes(seed=i))
    return image_search(ctx, data)


def in_new_folder(path: Path, content: bytes = b"not an image") -> None:
    """``content`` at ``path``, making its folder: ``x[/b].png`` is the file ``b].png`` in the folder ``x[``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


#: the start of an Encapsulated PostScript file: Pillow would hand it to Ghostscript to draw.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")
GHOSTSCRIPT_RUNS: list = []


def record_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    GHOSTSCRIPT_RUNS.clear()

    def ghostscript(*args, **kwargs):
        GHOSTSCRIPT_RUNS.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)


def no_ghostscript(ctx: Ctx) -> None:
    assert not GHOSTSCRIPT_RUNS, "a file reached the EPS decoder, which runs Ghostscript"


def sparse_file(path: Path, size: int = (1 << 30) + 1) -> None:
    """A file of ``size`` bytes that takes no disk space (and would take 1 GiB of memory if read whole)."""
    with open(path, "wb") as handle:
        handle.truncate(size)


def recipe_with(ctx: Ctx, old: str, new: str) -> Path:
    text = IMAGE_RECIPE.read_text()
    assert old in text
    return recipe(ctx, text.replace(old, new))


def predict_with_one_broken(ctx: Ctx) -> list:
    """`autotl predict` on a copy of the run's test/dark/ folder with one broken PNG in it (relative paths)."""
    root = ctx.copy_run()
    shutil.copytree(root / "data" / "train" / "dark", ctx.path("photos"))
    (ctx.path("photos") / "broken.png").write_bytes(png_bytes()[:len(png_bytes()) // 2])
    return ["predict", root / "bundle", "photos"]


# -- the table --------------------------------------------------------------------------------------------

CASES = [
    # image-classification data
    Case("image-missing-folder", "search DATA where DATA does not exist",
         lambda c: image_search(c, c.path("nowhere")), DATA,
         ("data folder not found", "nowhere", "give a folder with train/<class>/"), check=no_run_folder),
    Case("image-empty-folder", "an empty DATA folder",
         lambda c: image_search(c, c.path("data").mkdir() or c.path("data")), DATA,
         ("has no train/ folder", "lay the images out as")),
    Case("image-one-class", "train/ with one class folder",
         lambda c: image_search(c, images(c, classes=("only",))), DATA,
         ("only the class 'only'", "needs at least two class folders")),
    Case("image-class-without-images", "a class folder holding only a text file",
         class_without_images, DATA,
         ("class folder", "train/empty holds no readable image", "add images or remove the folder")),
    Case("image-class-too-small", "one image per class and no val/",
         lambda c: image_search(c, images(c, per_class=1)), DATA,
         ("has 1 readable image(s)", "add images or give a val/ folder")),
    Case("image-unknown-class-in-test", "test/zebra/ where train/ has no zebra",
         unknown_class_in_test, DATA,
         ("has class folders that train/ lacks: zebra", "add them to train/ or remove them")),
    Case("image-zero-byte-file", "a 0-byte train/dark/zero.png (resumed run)",
         resume_with_file("zero.png", lambda p: p.write_bytes(b"")), 0,
         ("train/dark/zero.png", "empty file"), skip=True),
    Case("image-truncated-png", "half of a PNG file (resumed run)",
         resume_with_file("cut.png", lambda p: p.write_bytes(png_bytes()[:len(png_bytes()) // 2])), 0,
         ("train/dark/cut.png", "truncated or corrupt"), skip=True),
    Case("image-truncated-jpeg", "half of a JPEG file (resumed run)",
         resume_with_file("cut.jpg", lambda p: p.write_bytes(jpeg_bytes()[:len(jpeg_bytes()) // 2])), 0,
         ("train/dark/cut.jpg", "truncated or corrupt"), skip=True),
    Case("image-text-named-png", "a text file named notes.png (resumed run)",
         resume_with_file("notes.png", lambda p: p.write_text("not an image\n")), 0,
         ("train/dark/notes.png", "not in an image format autotl decodes"), skip=True),
    Case("image-decompression-bomb", "a PNG whose header claims 30000x30000 pixels (resumed run)",
         resume_with_file("bomb.png", lambda p: p.write_bytes(png_claiming(30000, 30000))), 0,
         ("train/dark/bomb.png", "too many pixels (900,000,000 pixels", "decompression-bomb limit",
          "shrink the image"), skip=True),
    Case("image-symlink-loop", "train/dark/loop.png -> loop.png, and train/dark/again -> .. (resumed run)",
         resume_with_file("loop.png", symlink_loop), 0,
         ("train/dark/loop.png", "cannot be read (Too many levels of symbolic links)"), skip=True),
    Case("image-file-name-not-utf8", "train/dark/caf\\xe9.png, a file name in Latin-1 (resumed run)",
         bytes_named_file, 0, ("train/dark/caf\\xe9.png", "its name is not UTF-8; rename it"), skip=True),
    Case("image-class-name-not-utf8", "train/caf\\xe9/, a class folder named in Latin-1",
         bytes_named_class, DATA,
         ("has a class folder whose name is not UTF-8 (caf\\xe9)", "rename it"), check=no_run_folder),
    Case("image-unreadable-name-with-markup", "an unreadable train/dark/x[/b].png (resumed run)",
         resume_with_file("x[/b].png", in_new_folder), 0,
         ("train/dark/x[/b].png", "not in an image format autotl decodes"), skip=True),
    Case("image-unreadable-name-with-markup-tags", "an empty train/dark/[bold]y.png (resumed run)",
         resume_with_file("[bold]y.png", lambda p: p.write_bytes(b"")), 0,
         ("train/dark/[bold]y.png: empty file",), skip=True),
    Case("image-eps-named-jpg", "an EPS (PostScript) file named drawing.jpg (resumed run)",
         resume_with_file("drawing.jpg", lambda p: p.write_bytes(EPS)), 0,
         ("train/dark/drawing.jpg", "not in an image format autotl decodes: PNG, JPEG"), skip=True,
         patch=record_ghostscript, check=no_ghostscript),
    Case("image-huge-file", "a 1 GiB + 1 byte (sparse) train/dark/huge.jpg (resumed run)",
         resume_with_file("huge.jpg", sparse_file), 0,
         ("train/dark/huge.jpg", "larger than any image autotl decodes (at most 1 GiB); not read"), skip=True),
    Case("image-max-side-zero", "-d max_side=0",
         lambda c: image_search(c, images(c), "-d", "max_side=0"), USAGE,
         ("data option max_side must be a whole number of pixels, at least 16, not 0", "-d max_side=512"),
         check=no_run_folder),
    Case("image-max-side-not-a-number", "-d max_side=abc",
         lambda c: image_search(c, images(c), "-d", "max_side=abc"), USAGE,
         ("data option max_side must be a whole number of pixels", "not 'abc'")),
    Case("image-predict-one-unreadable", "predict BUNDLE photos/ where photos/broken.png is half a PNG",
         predict_with_one_broken, 0, ("photos/broken.png", "truncated or corrupt"), skip=True),
    Case("image-data-changed-on-resume", "the run's data with one more image, same --out",
         data_changed_on_resume, RUN,
         ("the data in", "changed since", "start a new run with another --out or --study")),

    # text-classification data
    Case("text-missing-folder", "search DATA where DATA does not exist",
         lambda c: text_search(c, c.path("nowhere")), DATA,
         ("data folder not found", "give a folder holding train.csv")),
    Case("text-empty-folder", "an empty DATA folder",
         lambda c: text_search(c, text_files(c)), DATA,
         ("has no train.csv, train.tsv or train.jsonl", "put the labelled texts there")),
    Case("text-one-label", "train.csv whose rows all have the label pos",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + "tea,pos\n" * 6)),
         DATA, ("train.csv, column 'label': every row has the label 'pos'", "needs at least two labels")),
    Case("text-no-text-column", "train.csv with columns review,label",
         lambda c: text_search(c, text_files(c, train_csv="review,label\n" + ROWS)), DATA,
         ("train.csv line 1: no column 'text'", "rename the column", "-d text_column=NAME")),
    Case("text-not-utf8", "train.csv in Latin-1 (caf\\xe9)",
         lambda c: text_search(c, text_files(c, train_csv=f"text,label\n{ROWS}caf\xe9 tea,pos\n".encode("latin-1"))),
         DATA, ("train.csv line 10, column 'text': bytes that are not UTF-8", "save the file as UTF-8")),
    Case("text-empty-csv", "a 0-byte train.csv",
         lambda c: text_search(c, text_files(c, train_csv="")), DATA,
         ("train.csv is empty", "it needs a header line `text,label`")),
    Case("text-header-only", "train.csv holding only its header line",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n")), DATA,
         ("train.csv has no rows", "one row per text under a header line")),
    Case("text-jsonl-broken-line", "train.jsonl whose line 2 is not JSON",
         lambda c: text_search(c, text_files(c, train_jsonl='{"text": "good", "label": "pos"}\n{"text": "bad",\n')),
         DATA, ("train.jsonl line 2: not valid JSON", "write one JSON object per line", "-d on_bad_lines=skip")),
    Case("text-unknown-label-in-test", "test.csv with a label train.csv never has",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS, test_csv="text,label\nso so,meh\n")),
         DATA, ("test.csv line 2, column 'label': label 'meh' never occurs in train.csv",
                "fix the label or add rows with it")),
    Case("text-jsonl-lone-surrogate", 'train.jsonl whose line 9 is {"text": "tea \\ud800", ...}',
         lambda c: text_search(c, text_files(c, train_jsonl=JSONL_ROWS + '{"text": "tea \\ud800", "label": "pos"}\n')),
         DATA, ("train.jsonl line 9, column 'text': \\ud800 is half of a UTF-16 surrogate pair, not a character",
                "write the character itself", "-d on_bad_lines=skip")),
    Case("text-column-not-yaml", "-d text_column=[x",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS), "-d", "text_column=[x"), DATA,
         ("train.csv line 1: no column '[x'", "-d text_column=NAME")),

    # models and weights
    Case("unknown-model", "--models nope",
         lambda c: image_search(c, images(c), models=("--models", "nope")), MODEL,
         ("unknown model 'nope'", "autotl plugins")),
    Case("unknown-model-on-resume", "the run's command with --models nope",
         lambda c: resume(c, models=("--models", "nope")), MODEL, ("unknown model 'nope'", "check the spelling")),
    Case("image-model-offline", "--models resnet50.a1_in1k with HF_HUB_OFFLINE=1 and an empty cache",
         lambda c: image_search(c, images(c), models=("--models", "resnet50.a1_in1k")), MODEL,
         ("no weights for timm model 'resnet50.a1_in1k'", "cannot be downloaded",
          "--weights resnet50.a1_in1k=FILE"),
         fresh_process=True, env={"HF_HUB_OFFLINE": "1"}),
    Case("text-model-offline", "--models bert-base-uncased with HF_HUB_OFFLINE=1 and an empty cache",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS),
                               models=("--models", "bert-base-uncased")),
         MODEL, ("no weights for transformers model 'bert-base-uncased'", "cannot be downloaded", "--models FOLDER"),
         fresh_process=True, env={"HF_HUB_OFFLINE": "1"}),
    Case("missing-weights-file", "--weights NAME=FILE where FILE does not exist",
         lambda c: image_search(c, images(c),
                                models=("--models", TINY, "--weights", f"{TINY}={c.path('none.safetensors')}")),
         MODEL,
         ("weights file for 'autotl_tiny_effnet' not found", "give the path of a .safetensors file")),
    Case("corrupt-weights-file", "--weights NAME=FILE where FILE is 100 random bytes named .safetensors",
         corrupt_weights, MODEL, ("cannot read weights file", "w.safetensors", "not a complete safetensors file")),
    Case("malicious-pickle-weights", "--weights NAME=FILE where FILE is a torch pickle whose loading runs code",
         malicious_weights, MODEL, ("cannot read weights file", "weights.pt", "a pickle that could run code",
                                    "never loads", "give a .safetensors file or a torch state dict"),
         check=no_code_ran),

    # storage, run folders, bundles
    Case("invalid-storage-url", "--storage foo://x",
         lambda c: image_search(c, images(c), "--storage", "foo://x"), USAGE,
         ("cannot open storage foo://x", "unknown kind of database 'foo'", "give sqlite:///FILE or postgresql://")),
    Case("unreachable-postgresql", f"--storage postgresql://u:{SECRET}@127.0.0.1:1/db",
         lambda c: image_search(c, images(c), "--storage", f"postgresql://u:{SECRET}@127.0.0.1:1/db"), USAGE,
         ("cannot open storage postgresql://u:***@127.0.0.1:1/db", ("is not installed; install it: pip install",
                                                                     "check the URL")),
         fresh_process=True),
    Case("trials-unreachable-postgresql", f"trials --storage postgresql://u:{SECRET}@127.0.0.1:1/db",
         lambda c: ["trials", "--storage", f"postgresql://u:{SECRET}@127.0.0.1:1/db", "--study", "x"], USAGE,
         ("cannot open storage postgresql://u:***@127.0.0.1:1/db",)),
    Case("trials-not-a-run", "trials FOLDER where FOLDER holds no run",
         lambda c: ["trials", c.tmp], RUN, ("holds no autotl run (run.json is missing)", "give the --out folder")),
    Case("unreadable-run-file", "trials RUN where RUN/run.json is not JSON",
         lambda c: ["trials", a_file(c, "run.json", "{not json").parent], RUN,
         ("run.json is unreadable", "restore it or use --storage")),
    Case("export-missing-run", "export RUN where RUN does not exist",
         lambda c: ["export", c.path("nothere"), "--out", c.path("bundle")], RUN,
         ("nothere holds no autotl run", "give the --out folder of `autotl search`")),
    Case("predict-missing-bundle", "predict BUNDLE where BUNDLE does not exist",
         lambda c: ["predict", c.path("nope"), a_file(c, "x.png")], BUNDLE,
         ("no bundle at", "give the --out folder of `autotl export`")),
    Case("predict-tampered-weights", "predict with a bundle whose model.safetensors has one byte edited",
         lambda c: ["predict", tampered_bundle(c), c.copied_run / "data/test/dark"], BUNDLE,
         ("model.safetensors does not match the checksum in config.json", "export the bundle again")),
    Case("unwritable-out", "--out FILE/run where FILE is a regular file (fails for root too)",
         lambda c: image_search(c, images(c), out=a_file(c, "somefile") / "run"),
         USAGE, ("cannot write to the output folder", "somefile/run", "Not a directory", "choose another --out")),

    # options and recipes
    Case("negative-time-budget", "--time-budget=-5",
         lambda c: image_search(c, images(c), "--time-budget=-5"), USAGE,
         ("--time-budget", "'-5' is negative", "give a time budget above zero", "--help")),
    Case("zero-time-budget", "--time-budget 0",
         lambda c: image_search(c, images(c), "--time-budget", "0"), USAGE,
         ("--time-budget", "must be more than zero", "10m")),
    Case("unparsable-time-budget", "--time-budget soon",
         lambda c: image_search(c, images(c), "--time-budget", "soon"), USAGE,
         ("--time-budget", "'soon' is not a duration", "90s, 10m, 1h")),
    Case("zero-trials", "--trials 0",
         lambda c: image_search(c, images(c), trials="0"), USAGE,
         ("--trials", "0 is not in the range x>=1; see `autotl search --help`")),
    Case("unknown-option", "--trails 3",
         lambda c: image_search(c, images(c), "--trails", "3"), USAGE,
         ("No such option '--trails'", "'--trials'", "see `autotl search --help`")),
    Case("unknown-task", "--task audio-tagging",
         lambda c: ["search", images(c), "--task", "audio-tagging", "--out", c.path("run")], USAGE,
         ("unknown task 'audio-tagging'", "installed tasks: image-classification, image-multilabel, image-regression, "
                                          "text-classification, text-multilabel, text-regression, token-classification")),
    Case("recipe-invalid-yaml", "--recipe FILE with an unclosed brace on line 4",
         lambda c: image_search(c, images(c), recipe=recipe(c, "task: image-classification\nspace:\n  lr: {low: 1\n")),
         USAGE,
         ("recipe.yaml at line 4 is not valid YAML", "fix that line")),
    Case("recipe-unknown-key", "--recipe FILE with a top-level key `epochs: 3`",
         lambda c: image_search(c, images(c), recipe=recipe(c, IMAGE_RECIPE.read_text() + "epochs: 3\n")), USAGE,
         ("recipe.yaml: epochs: unknown key", "known keys are")),
    Case("recipe-for-another-task", "a text-classification recipe for --task image-classification",
         lambda c: image_search(c, images(c), recipe=TEXT_RECIPE), USAGE,
         ("is for task 'text-classification', not 'image-classification'", "leave out --recipe")),
    Case("unknown-data-option", "-d nosuchkey=1",
         lambda c: image_search(c, images(c), "-d", "nosuchkey=1"), USAGE,
         ("--data-option: unknown data option 'nosuchkey' for task 'image-classification'",
          "its options are val_fraction, max_side")),
    Case("unknown-data-option-in-recipe", "a recipe with data: {text_colum: review}",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS), recipe=recipe(
             c, TEXT_RECIPE.read_text().replace("data: {", "data: {text_colum: review, "))), USAGE,
         ("recipe.yaml: data: unknown data option 'text_colum'", "text_column, label_column, on_bad_lines")),
    Case("data-option-not-key-value", "-d text_column",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS), "-d", "text_column"), USAGE,
         ("--data-option 'text_column' is not KEY=VALUE", "-d text_column=review")),
    Case("cuda-without-cuda", "--device cuda on a machine without CUDA",
         lambda c: image_search(c, images(c), "--device", "cuda"), USAGE,
         ("--device cuda: no CUDA device is available here", "use --device cpu"), patch=no_cuda),
    Case("negative-seed", "--seed -1",
         lambda c: image_search(c, images(c), "--seed", "-1"), USAGE,
         ("--seed", "-1 is not in the range 0<=x<=4294967295", "see `autotl search --help`"), check=no_run_folder),
    Case("recipe-unknown-sampler-key", "a recipe with sampler: {n_startup: 5}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "n_startup_trials: 2", "n_startup: 5")), USAGE,
         ("recipe.yaml: sampler.n_startup: unknown key for the tpe sampler", "known keys are name, ",
          "n_startup_trials"), check=no_run_folder),
    Case("recipe-fixed-precision-fp16", "a recipe with fixed: {precision: fp16}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "fixed: {", "fixed: {precision: fp16, ")), USAGE,
         ("recipe.yaml: fixed.precision: must be one of auto, fp32, bf16, not 'fp16'",), check=no_run_folder),
    Case("recipe-misspelt-space-key", "a recipe searching `lerning_rate` besides lr",
         lambda c: image_search(c, images(c), recipe=recipe_with(
             c, "  lr: {", "  lerning_rate: {low: 1.0e-3, high: 1.0e-2}\n  lr: {")), USAGE,
         ("recipe.yaml: space: unknown parameter 'lerning_rate' for task 'image-classification' "
          "(did you mean 'lr'?); known: augment, batch_size,",), check=no_run_folder),
    Case("recipe-fixed-unknown-to-the-task", "an image recipe with fixed: {max_length: 64} (a text parameter)",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "fixed: {", "fixed: {max_length: 64, ")), USAGE,
         ("recipe.yaml: fixed: unknown parameter 'max_length' for task 'image-classification'", "known: "),
         check=no_run_folder),
    Case("recipe-start-with-misspelt", "a recipe whose start_with point names `resolutoin`",
         lambda c: image_search(c, images(c), recipe=recipe(c, IMAGE_RECIPE.read_text() + (
             "start_with:\n  - {lr: 1.0e-3, resolutoin: 32}\n"))), USAGE,
         ("recipe.yaml: start_with[0]: unknown parameter 'resolutoin'", "(did you mean 'resolution'?)"),
         check=no_run_folder),
    Case("recipe-fixed-head-init", "a recipe with fixed: {head_init: random}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "fixed: {", "fixed: {head_init: random, ")), USAGE,
         ("recipe.yaml: fixed.head_init: must be one of zeros, default, not 'random'",), check=no_run_folder),
    Case("recipe-fixed-ema-decay-one-or-more", "a recipe with fixed: {ema_decay: 1.5}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "fixed: {", "fixed: {ema_decay: 1.5, ")), USAGE,
         ("recipe.yaml: fixed.ema_decay: must be a number from 0 to 1 (1 excluded), not 1.5",), check=no_run_folder),
    Case("recipe-fixed-augment-unknown", "a recipe with fixed: {augment: rotate}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "augment: flip", "augment: rotate")), USAGE,
         ("recipe.yaml: fixed.augment: must be one of none, flip, flip+shift, shift, not 'rotate'",), check=no_run_folder),
    Case("recipe-int-parameter-fraction", "a recipe searching epochs: {low: 2.5, high: 4}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "  lr: {", "  epochs: {low: 2.5, high: 4}\n  lr: {")),
         USAGE, ("recipe.yaml: space.epochs.low: must be a whole number, 1 or more, not 2.5",), check=no_run_folder),
    Case("recipe-categorical-as-range", "a recipe searching precision: {low: 0, high: 1}",
         lambda c: image_search(c, images(c), recipe=recipe_with(c, "  lr: {", "  precision: {low: 0, high: 1}\n  lr: {")),
         USAGE, ("recipe.yaml: space.precision: `precision` takes one of auto, fp32, bf16: search it as {choices: [...]}",),
         check=no_run_folder),
    Case("text-recipe-max-length-too-short", "a text recipe with fixed: {max_length: 4}",
         lambda c: text_search(c, text_files(c, train_csv="text,label\n" + ROWS), recipe=recipe(
             c, TEXT_RECIPE.read_text().replace("fixed: {", "fixed: {max_length: 4, ").replace(
                 "  max_length: {choices: [16, 32]}\n", ""))), USAGE,
         ("recipe.yaml: fixed.max_length: must be a whole number, 8 or more, not 4",), check=no_run_folder),
    Case("recipe-fixed-lr-not-a-number", "a recipe with fixed: {lr: fast} (and no lr in space)",
         lambda c: image_search(c, images(c), recipe=recipe_with(
             c, "  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nfixed: {", "fixed: {lr: fast, ")), USAGE,
         ("recipe.yaml: fixed.lr: must be a number, not 'fast'",), check=no_run_folder),
    Case("unknown-device", "--device tpu9",
         lambda c: image_search(c, images(c), "--device", "tpu9"), USAGE,
         ("--device 'tpu9' is not a device", "use auto, cpu, cuda or cuda:N")),
]


# -- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def text_model(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "model"))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_weights) -> Path:
    """``data/``, ``run/`` with one completed trial of the tiny network, and ``bundle/`` exported from it."""
    from autotl.export import ExportOptions, export_bundle
    from autotl.plugins import get_registry
    from autotl.progress import Reporter
    from autotl.runs import locate
    from autotl.controller import Search, SearchOptions

    root = tmp_path_factory.mktemp("finished")
    data = make_image_folder(root / "data", classes=("dark", "light"), per_class=6, size=16)
    options = SearchOptions(task="image-classification", data=data, out=root / "run", recipe=str(IMAGE_RECIPE),
                            models=[TINY], weights={TINY: str(tiny_weights)}, trials=1, seed=0, device="cpu")
    search = Search(options, get_registry(), Reporter())
    search.open()
    search.run()
    assert completed(root / "run"), "the template run has no completed trial"
    export_bundle(locate(str(root / "run"), None, None), ExportOptions(out=root / "bundle", device="cpu"))
    return root


def completed(run: Path) -> list[tuple[int, float]]:
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{run / 'study.db'}")
    return [(t.number, t.value) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


TABLE: list[tuple[str, str, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def bad_input_table():
    """With AUTOTL_BAD_INPUT_TABLE=FILE: write the cases, their exit codes and messages as Markdown."""
    yield
    target = os.environ.get("AUTOTL_BAD_INPUT_TABLE")
    if target and TABLE:
        order = {case.id: i for i, case in enumerate(CASES)}
        lines = ["| case | input | exit code | the message the user sees |", "|---|---|---|---|"]
        for case_id, given, code, message in sorted(TABLE, key=lambda row: order[row[0]]):
            cell = message.replace("|", "\\|")
            lines.append(f"| {case_id} | {given.replace('|', '/')} | {code} ({EXIT_CODES.get(code, '?')}) | "
                         f"`{cell}` |")
        Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the test ---------------------------------------------------------------------------------------------

def run_cli(case: Case, args: list, ctx: Ctx, monkeypatch) -> tuple[int, str, str]:
    args = [str(a) for a in args]
    if case.fresh_process:
        env = {**os.environ, "HF_HOME": str(ctx.path("hf-home")), **case.env}
        proc = subprocess.run([sys.executable, "-c", FRESH, *args], capture_output=True, text=True, timeout=300,
                              env=env, cwd=ctx.tmp)
        return proc.returncode, proc.stdout, proc.stderr
    if case.patch is not None:
        case.patch(monkeypatch)
    monkeypatch.chdir(ctx.tmp)
    result = CliRunner().invoke(cli, args, prog_name="autotl", env=case.env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the command raised past its error handling: {result.exception!r}\n{result.output}")
    return result.exit_code, result.stdout, result.stderr


def matches(line: str, fragment) -> bool:
    return any(f in line for f in fragment) if isinstance(fragment, tuple) else fragment in line


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path, request, monkeypatch):
    ctx = Ctx(tmp_path, request)
    args = case.make(ctx)
    before = completed(ctx.copied_run / "run") if ctx.copied_run else None

    code, stdout, stderr = run_cli(case, args, ctx, monkeypatch)

    everything = stdout + stderr
    assert "Traceback" not in everything, everything
    assert SECRET not in everything, "a storage password reached the output"
    assert code == case.code, f"exit code {code}, expected {case.code}\n{everything}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if case.skip:
        assert not any(line.startswith("Error:") for line in lines), stderr
        assert any(line.startswith("Skipped 1 unusable item(s)") and "repair or remove them" in line
                   for line in lines), stderr
        shown = [line.strip() for line in lines if line.startswith(("  train/", "  photos/"))]
        assert len(shown) == 1, stderr
        message = shown[0]
    else:
        assert stdout == "", f"a failed command printed to stdout: {stdout}"
        errors = [line for line in lines if line.startswith("Error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"not one Error: line at the end of stderr:\n{stderr}"
        others = [line for line in lines[:-1] if not line.startswith(PROGRESS)]
        assert not others, f"stderr holds more than the error and progress lines:\n{stderr}"
        message = errors[0]
    for fragment in case.says:
        text = str(fragment).replace("{tmp}", str(tmp_path)) if not isinstance(fragment, tuple) else fragment
        assert matches(message, text), f"{fragment!r} is not in: {message}"
    if before is not None:
        assert completed(ctx.copied_run / "run") == before, "a completed trial was lost or changed"
    if case.check is not None:
        case.check(ctx)
    TABLE.append((case.id, case.input, code, message.replace(str(tmp_path), "$TMP").replace(str(TESTS), "tests")))


def test_the_table_covers_both_tasks_and_the_cli():
    assert len(CASES) >= 24
    assert len({case.id for case in CASES}) == len(CASES)
    assert sum(case.id.startswith("image-") for case in CASES) >= 8
    assert sum(case.id.startswith("text-") for case in CASES) >= 8
    assert {case.code for case in CASES} == {0, USAGE, DATA, MODEL, RUN, BUNDLE}


# -- data cases that are not refusals: what is read, and how ----------------------------------------------

def one_trial_with_recipe(tmp_path: Path, tiny_weights: Path, text: str) -> optuna.trial.FrozenTrial:
    """The completed trial of a one-trial `autotl search` of the tiny network with the recipe ``text``."""
    (tmp_path / "recipe.yaml").write_text(text)
    data = make_image_folder(tmp_path / "data", classes=("dark", "light"), per_class=3, splits=("train",), size=16)
    result = CliRunner().invoke(cli, [str(a) for a in image_search(
        Ctx(tmp_path, None), data, recipe=tmp_path / "recipe.yaml",
        models=("--models", TINY, "--weights", f"{TINY}={tiny_weights}"))], prog_name="autotl")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    [trial] = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return trial


def test_a_fixed_number_that_yaml_reads_as_a_string_is_the_number(tmp_path, tiny_weights):
    """`fixed: {lr: 1e-3}`: YAML reads 1e-3 (no decimal point) as a string; the search takes it as the number."""
    text = IMAGE_RECIPE.read_text().replace("  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nfixed: {",
                                            "fixed: {lr: 1e-3, ")
    trial = one_trial_with_recipe(tmp_path, tiny_weights, text)
    assert trial.user_attrs["config"]["lr"] == 0.001


def test_parameters_are_searched_as_their_declared_type_whatever_the_bounds(tmp_path, tiny_weights):
    """`label_smoothing: {low: 0, high: 1}` is a float range (not 0 or 1); `epochs` on a log scale stays whole."""
    text = IMAGE_RECIPE.read_text().replace("  lr: {", "  label_smoothing: {low: 0, high: 1}\n"
                                            "  epochs: {low: 1, high: 2, log: true}\n  lr: {")
    trial = one_trial_with_recipe(tmp_path, tiny_weights, text.replace("epochs: 2, ", ""))
    assert trial.distributions["label_smoothing"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert trial.distributions["epochs"] == optuna.distributions.IntDistribution(1, 2, log=True)
    assert isinstance(trial.params["epochs"], int)


def test_a_study_that_searched_a_range_in_another_kind_resumes_in_that_kind(tmp_path, tiny_weights):
    """A study begun before parameters were declared searched `label_smoothing: {low: 0, high: 1}` in whole
    numbers; resumed, it goes on so (Optuna refuses another kind for the same name: every trial would fail)."""
    text = IMAGE_RECIPE.read_text().replace("  lr: {", "  label_smoothing: {low: 0, high: 1}\n  lr: {")
    one_trial_with_recipe(tmp_path, tiny_weights, text)
    database = tmp_path / "run" / "study.db"
    with sqlite3.connect(database) as db:  # as autotl up to 6f673bc recorded it: an int range
        db.execute("UPDATE trial_params SET param_value = 0, distribution_json = ? WHERE param_name = 'label_smoothing'",
                   (optuna.distributions.distribution_to_json(optuna.distributions.IntDistribution(0, 1)),))
    data = tmp_path / "data"
    result = CliRunner().invoke(cli, [str(a) for a in image_search(
        Ctx(tmp_path, None), data, recipe=tmp_path / "recipe.yaml", trials="2",
        models=("--models", TINY, "--weights", f"{TINY}={tiny_weights}"))], prog_name="autotl")
    assert result.exit_code == 0, result.output
    assert "The study searched label_smoothing in whole numbers" in result.output
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{database}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    assert all(t.distributions["label_smoothing"] == optuna.distributions.IntDistribution(0, 1) for t in trials)


def test_hidden_sub_folders_are_neither_trained_on_nor_predicted(tmp_path, request):
    """`train/cat/.picasaoriginals/x.png`: one rule (skip) for the search and for `autotl predict`."""
    ctx = Ctx(tmp_path, request)
    args = resume(ctx)
    data = ctx.copied_run / "data"
    hidden = data / "train" / "dark" / ".picasaoriginals"
    hidden.mkdir()
    (hidden / "x.png").write_bytes(png_bytes(seed=3))  # readable: trained on, it would change the data
    (hidden / "broken.png").write_bytes(b"not an image")  # unreadable: read, it would be listed
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="autotl")
    assert result.exit_code == 0, result.output  # the data's fingerprint did not change: nothing new was read
    assert ".picasaoriginals" not in result.output

    photos = ctx.path("photos")
    shutil.copytree(data / "train" / "dark", photos)
    result = CliRunner().invoke(cli, ["predict", str(ctx.copied_run / "bundle"), str(photos), "--json"],
                                prog_name="autotl")
    assert result.exit_code == 0, result.output
    predicted = {Path(p["input"]).name for p in json.loads(result.stdout)}
    assert predicted == {p.name for p in (data / "train" / "dark").glob("*.png")}
    assert result.stderr == ""


def sideways_jpeg(path: Path) -> np.ndarray:
    """A JPEG stored 40 wide and 24 high whose EXIF says: turn 90 degrees to view (orientation 6).

    Returns the upright pixels as Pillow's own ``exif_transpose`` shows them: 24 wide, 40 high.
    """
    rng = np.random.default_rng(7)
    stored = np.zeros((24, 40, 3), dtype=np.uint8)
    stored[:, :20] = 230  # a bright left half: the top once upright
    stored += rng.integers(0, 20, stored.shape, dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    from PIL import ImageOps

    with Image.open(path) as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert upright.shape == (40, 24, 3)
    return upright


def test_exif_orientation_is_applied_alike_in_search_and_predict(tmp_path, request):
    """A phone photo taken sideways trains upright, and `autotl predict` sees it as the search did."""
    import torch
    from autotl_image import ImageClassification
    from autotl_image._folder import pixels

    from autotl.bundle import load

    ctx = Ctx(tmp_path, request)
    root = ctx.copy_run()
    data = make_image_folder(ctx.path("data"), classes=("dark", "light"), per_class=3, splits=("train",), size=16)
    upright = sideways_jpeg(data / "train" / "dark" / "phone.jpg")

    loaded = ImageClassification().load(data, seed=0, val_fraction=0.25, options={})
    [searched] = [np.asarray(images[paths.index("train/dark/phone.jpg")])
                  for images, _, paths in loaded.payload.splits.values() if "train/dark/phone.jpg" in paths]
    assert searched.shape == upright.shape and np.array_equal(searched, upright)  # the search: upright

    bundle = load(root / "bundle", device="cpu")  # predict: the same pixels, resized as the search resizes
    predicted = bundle.split([data / "train" / "dark" / "phone.jpg"]).inputs
    assert torch.equal(predicted, pixels([Image.fromarray(upright)], int(bundle.settings["resolution"]),
                                         str(bundle.settings["interpolation"])))

    # through the command line: the sideways JPEG and its upright twin (lossless PNG) predict the same
    Image.fromarray(upright).save(ctx.path("upright.png"))
    result = CliRunner().invoke(cli, ["predict", str(root / "bundle"), str(data / "train" / "dark" / "phone.jpg"),
                                      str(ctx.path("upright.png")), "--json", "--top-k", "2"], prog_name="autotl")
    assert result.exit_code == 0, result.output
    sideways_p, upright_p = json.loads(result.stdout)
    assert sideways_p["top_k"] == upright_p["top_k"]


def test_predict_skips_an_unreadable_image_and_predicts_the_rest(tmp_path, request, monkeypatch):
    """`autotl predict BUNDLE folder/` with one broken image: the others are predicted, the broken one listed."""
    ctx = Ctx(tmp_path, request)
    args = predict_with_one_broken(ctx)
    monkeypatch.chdir(tmp_path)
    good = sorted(p.name for p in ctx.path("photos").glob("*.png") if p.name != "broken.png")
    for extra in ([], ["--json"], ["--csv"]):
        result = CliRunner().invoke(cli, [str(a) for a in args] + extra, prog_name="autotl")
        assert result.exit_code == 0, result.output
        header, listed = result.stderr.splitlines()
        assert header == "Skipped 1 unusable item(s), not predicted (repair or remove them to predict them):"
        assert listed.startswith("  photos/broken.png: not a readable image, truncated or corrupt")
        if extra == ["--json"]:
            names = [Path(p["input"]).name for p in json.loads(result.stdout)]
        elif extra == ["--csv"]:
            names = [Path(line.split(",")[0]).name for line in result.stdout.splitlines()[1:]]
        else:
            names = [Path(line.split("\t")[0]).name for line in result.stdout.splitlines()]
        assert names == good
    # nothing readable at all: one Error line, exit code 3
    result = CliRunner().invoke(cli, ["predict", str(args[1]), "photos/broken.png"], prog_name="autotl")
    assert result.exit_code == DATA and result.stdout == ""
    assert result.stderr.startswith("Error: cannot predict on photos/broken.png: not a readable image")
    assert result.stderr.count("\n") == 1
