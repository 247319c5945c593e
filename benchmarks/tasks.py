"""The task types end to end on real data: search, export, predict on the test file, score it independently.

    python benchmarks/tasks.py [--tasks NAME,...] --budget SECONDS [--seed N] [--datasets FOLDER] [--keep DIR]

Per task, one run through the command line, as a user would:

1. ``autotl search --task TASK DATA --time-budget BUDGET``: the task's built-in recipe and every default;
2. ``autotl best --json``: the metric the search ranked by and the best trial's recorded test metrics;
3. ``autotl export`` (with ``--format onnx`` where the task's network exports to ONNX);
4. ``autotl predict --json BUNDLE TEST_FILE``: the bundle's predictions for the whole test file;
5. the test file's truth read by this script (not by autotl), and the primary metric computed here
   from the predictions with scikit-learn / seqeval: RMSE for regression, micro-F1 for multi-label,
   token accuracy (and entity F1 where tags are BIO) for tokens.

The table gives, per task, the search's recorded test score, the score of the bundle's predictions
computed here, their difference, and the cheap baseline the issue names. The last line is one JSON
object: ``{"TASK": {"metric": ..., "recorded": ..., "predicted": ..., "seconds": ...}}``.

Data: the shared sets (``--datasets``, default ``../shared/datasets`` beside the repository):
``text_regression/vader_sentiment``, ``text_multilabel/movielens_genres``, ``tokens/turkish_twt_upos``;
the two image tasks use sets this script derives from real photos in a temporary folder:
``image-regression``: ``gcompris_photos`` rotated by a random angle in [-40, 40] degrees (seeded) and
centre-cropped so no corner shows, the target being the angle; ``image-multilabel``: pairs of
``fashion_mnist_100shot`` items side by side on one 56x28 canvas, the labels being their classes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("text-regression", "text-multilabel", "token-classification", "image-regression", "image-multilabel")
BASELINES = {
    "text-regression": "TF-IDF + ridge: RMSE 0.937 (issue #16); predicting the mean: 1.384",
    "text-multilabel": "TF-IDF + one-vs-rest LR: micro-F1 0.425 (issue #16)",
    "token-classification": "each word's most frequent tag: token accuracy 0.866",
    "image-regression": "predicting the mean angle (computed here)",
    "image-multilabel": "predicting the two most frequent labels (computed here)",
}


def autotl(*args: str, capture: bool = True) -> str:
    """Run the ``autotl`` command of this interpreter's environment; raise with its stderr when it fails."""
    done = subprocess.run([sys.executable, "-m", "autotl.cli", *args], capture_output=capture, text=True)
    if done.returncode != 0:
        raise SystemExit(f"Error: autotl {' '.join(args)} failed ({done.returncode}): "
                         f"{(done.stderr or '').strip().splitlines()[-1:] or ''}")
    return done.stdout


# -- derived image sets ------------------------------------------------------------------------------
def rotated_photos(source: Path, out: Path, seed: int) -> Path:
    """gcompris photos rotated by a random angle, centre-cropped; ``train.csv``/``test.csv``: image,target."""
    from PIL import Image

    rng = random.Random(seed)
    for split in ("train", "test"):
        rows = []
        for path in sorted((source / split).glob("*/*")):
            angle = rng.uniform(-40.0, 40.0)
            image = Image.open(path).convert("RGB")
            side = min(image.size)
            image = image.crop(((image.width - side) // 2, (image.height - side) // 2,
                                (image.width + side) // 2, (image.height + side) // 2))
            turned = image.rotate(angle, resample=Image.BICUBIC)
            keep = int(side / (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))))
            margin = (side - keep) // 2
            turned = turned.crop((margin, margin, margin + keep, margin + keep))
            name = f"{split}/{path.parent.name}_{path.stem}.png"
            (out / split).mkdir(parents=True, exist_ok=True)
            turned.save(out / name)
            rows.append((name, f"{angle:.3f}"))
        write_csv(out / f"{split}.csv", ("image", "target"), rows)
    return out


def fashion_pairs(source: Path, out: Path, seed: int, per_split: dict[str, int]) -> Path:
    """Two fashion items side by side; ``labels`` is their classes joined with ``|``."""
    from PIL import Image

    rng = random.Random(seed)
    for split, count in per_split.items():
        items = sorted((source / split).glob("*/*"))
        rows = []
        (out / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            left, right = rng.sample(items, 2)
            canvas = Image.new("L", (56, 28))
            canvas.paste(Image.open(left).convert("L").resize((28, 28)), (0, 0))
            canvas.paste(Image.open(right).convert("L").resize((28, 28)), (28, 0))
            name = f"{split}/{i:05d}.png"
            canvas.save(out / name)
            rows.append((name, "|".join(sorted({left.parent.name, right.parent.name}))))
        write_csv(out / f"{split}.csv", ("image", "labels"), rows)
    return out


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
            current = []
            continue
        parts = line.split()
        current.append((parts[0], parts[-1]))
    if current:
        sentences.append(current)
    return sentences


# -- scoring the bundle's predictions here --------------------------------------------------------------
def score_regression(test: Path, predictions: list[dict]) -> dict[str, float]:
    truth = np.array([float(row["target"]) for row in read_csv(test)])
    guess = np.array([float(p["value"]) for p in predictions])
    check_count(test, truth, guess)
    return {"rmse": float(np.sqrt(np.mean((guess - truth) ** 2))), "mae": float(np.mean(np.abs(guess - truth))),
            "mean_baseline_rmse": float(np.sqrt(np.mean((truth.mean() - truth) ** 2)))}


def score_multilabel(test: Path, predictions: list[dict], column: str) -> dict[str, float]:
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    truth = [set(filter(None, row[column].split("|"))) for row in read_csv(test)]
    guess = [set(p["labels"]) for p in predictions]
    check_count(test, truth, guess)
    binarizer = MultiLabelBinarizer().fit(truth + guess)
    t, g = binarizer.transform(truth), binarizer.transform(guess)
    counts = t.sum(0)
    frequent = np.zeros_like(t)
    frequent[:, np.argsort(-counts)[:2]] = 1
    return {"micro_f1": float(f1_score(t, g, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(t, g, average="macro", zero_division=0)),
            "two_most_frequent_micro_f1": float(f1_score(t, frequent, average="micro", zero_division=0))}


def score_tokens(test: Path, predictions: list[dict]) -> dict[str, float]:
    sentences = read_conll(test)
    check_count(test, sentences, predictions)
    right = total = 0
    true_tags, guessed = [], []
    for sentence, predicted in zip(sentences, predictions):
        tags = list(predicted["tags"])
        if len(tags) != len(sentence):
            raise SystemExit(f"Error: a prediction has {len(tags)} tags for a sentence of {len(sentence)} words")
        right += sum(t == g for (_, t), g in zip(sentence, tags))
        total += len(sentence)
        true_tags.append([t for _, t in sentence])
        guessed.append(tags)
    scores = {"token_accuracy": right / max(total, 1)}
    if all(t == "O" or t[:2] in ("B-", "I-") for s in true_tags for t in s):
        from seqeval.metrics import f1_score

        scores["entity_f1"] = float(f1_score(true_tags, guessed))
    return scores


def check_count(test: Path, truth, guess) -> None:
    if len(truth) != len(guess):
        raise SystemExit(f"Error: {len(guess)} predictions for the {len(truth)} items of {test}")


# -- one task -------------------------------------------------------------------------------------------
def run_task(task: str, data: Path, test_file: Path, budget: int, seed: int, work: Path) -> dict:
    run_dir, bundle = work / f"run-{task}", work / f"bundle-{task}"
    started = time.time()
    autotl("search", "--task", task, str(data), "--out", str(run_dir), "--time-budget", f"{budget}s",
           "--seed", str(seed), capture=False)
    searched = time.time() - started
    best = json.loads(autotl("best", str(run_dir), "--json"))
    metric = best["metric"]
    recorded = (best.get("test_metrics") or {}).get(metric)
    formats = ["--format", "onnx"]
    autotl("export", str(run_dir), "--out", str(bundle), "--force", *formats)
    predictions = json.loads(autotl("predict", str(bundle), str(test_file), "--json"))
    if task.endswith("regression"):
        mine = score_regression(test_file, predictions)
    elif task.endswith("multilabel"):
        mine = score_multilabel(test_file, predictions, "labels" if task.startswith("image") else "label")
    else:
        mine = score_tokens(test_file, predictions)
    return {"metric": metric, "recorded": recorded, "predicted": mine.get(metric), "scores_here": mine,
            "recorded_test_metrics": best.get("test_metrics"), "best_trial": best.get("number"),
            "seconds": round(searched, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks [default: all five]")
    parser.add_argument("--budget", type=int, default=900, help="seconds per search [default: 900, the issue's 15m]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--keep", type=Path, default=None, help="keep runs and bundles in this folder")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if not args.datasets.is_dir():
        parser.error(f"{args.datasets} is missing: pass --datasets FOLDER (the shared data sets)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="autotl-tasks-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTOTL_CACHE_DIR", str(work / "cache"))
    d = args.datasets
    sources = {
        "text-regression": lambda: (d / "text_regression/vader_sentiment", "test.csv"),
        "text-multilabel": lambda: (d / "text_multilabel/movielens_genres", "test.csv"),
        "token-classification": lambda: (d / "tokens/turkish_twt_upos", "test.conll"),
        "image-regression": lambda: (rotated_photos(d / "image/gcompris_photos", work / "rotated", args.seed),
                                     "test.csv"),
        "image-multilabel": lambda: (fashion_pairs(d / "image/fashion_mnist_100shot", work / "pairs", args.seed,
                                                   {"train": 1000, "test": 500}), "test.csv"),
    }
    results = {}
    for task in tasks:
        data, test_name = sources[task]()
        results[task] = run_task(task, data, data / test_name, args.budget, args.seed, work)
    print(f"\n{'task':22} {'metric':16} {'recorded':>9} {'predict':>9} {'diff':>9} {'search s':>9}  baseline")
    for task, r in results.items():
        diff = (abs(r["recorded"] - r["predicted"]) if r["recorded"] is not None and r["predicted"] is not None
                else float("nan"))
        print(f"{task:22} {r['metric']:16} {r['recorded']:9.4f} {r['predicted']:9.4f} {diff:9.2e} "
              f"{r['seconds']:9.0f}  {BASELINES[task]}; here: "
              + ", ".join(f"{k} {v:.4f}" for k, v in r["scores_here"].items()))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
