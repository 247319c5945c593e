"""The meta-dataset: a fixed pool of configurations trained on many data sets, each one's scores and cost in one table.

    python benchmarks/metadata.py [--task TASK] [--sets NAME,...] [--seeds N] [--seed S] [--out TABLE.csv]
                                  [--datasets FOLDER] [--data FOLDER --name NAME]

Per data set and seed, one ``autotl search`` runs every configuration of the task's pool (:data:`POOLS`) as a start
point, in the pool's order, with the task's built-in recipe otherwise (its fixed settings, the frozen-prefix cache,
a converged-head trial per model first), and nothing that would choose among them: no pruning, no pre-ranking, no
selection by cross-validation, no refit. Each trial is a row of the table: the set and its size, the seed, the
configuration, its validation score at every epoch (the learning curve) and at its best epoch, its test score (its
kept weights on the set's test split, which chose nothing) and its cost (the trial's wall seconds on this machine,
the frozen-prefix cache included as a search meets it).

The sets (:data:`SETS`): the task's classification sets under the shared data sets (``--datasets``, by default
``../shared/datasets`` beside the repository) and subsamples of them, stratified and drawn with the seed:
fashion_mnist at 50, 20 and 10 training images per class (30 per class of its test split), lfw_faces and
gcompris_photos whole; fine_foods, jane_austen and spam_assassin at 600 training rows and 600 test rows, and
fine_foods at 200. That cap is the meta-dataset's fidelity (a full MiniLM fine-tune epoch on 3400 reviews takes
about 260 s on 2 CPU cores, and each configuration's test split is predicted); every configuration trains its own
number of epochs, validated after each. The curves let `benchmarks/portfolio.py` report how well the first epochs
rank the configurations against their best (Spearman's rho), which says whether a larger meta-dataset could stop
its trials early. Ranges are not fitted to the data here: a configuration runs at its own resolution or length.

``--out`` keeps every finished (set, seed) in the table as soon as it finishes; running again with the same table
skips what it holds and adds what is missing: more seeds (``--seed 1 --seeds 1``), more sets, a GPU's run.
``--data FOLDER --name NAME`` (with one ``--task``) runs the pool on a set of your own instead (it needs a test
split, which scores the configurations and chooses nothing), so that the portfolio learns from your data too.

The pool is the hand-typed start points of the built-in recipes as they were before the portfolio replaced them
(``hand-*``, kept here so the comparison stays possible) and configurations that cover the space's regimes: linear
probes on cached features, partial fine-tunes above a cached frozen prefix, LoRA, full fine-tunes, at the
resolutions and lengths the recipes offer. Its size is set by about two hours of a 2-core CPU for one seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parent.parent / "shared" / "datasets"
TABLE = HERE / "results" / "metadata.csv"

IMAGE_FIXED = {"batch_size": 32, "weight_decay": 5.0e-3}
_M, _L0, _L1, _L2 = "mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"
_T = "all-MiniLM-L6-v2"

#: the configurations trained on every set: id -> start point (every searched parameter named)
POOLS: dict[str, dict[str, dict[str, Any]]] = {
    "image-classification": {
        # the built-in recipe's start point before the portfolio (typed by hand on fashion_mnist_100shot)
        "hand-1": {"model": _M, "freeze": 0, "lora_rank": 0, "lr": 1.0e-3, "resolution": 128, "epochs": 12,
                   "batch_size": 32, "weight_decay": 5.0e-3, "augment": "flip+shift"},
        # linear probes trained by the optimiser on cached features (freeze = groups - 1)
        "probe-m128": {"model": _M, "freeze": 8, "lora_rank": 0, "lr": 3.0e-3, "resolution": 128, "epochs": 10,
                       **IMAGE_FIXED, "augment": "none"},
        "probe-l0-224": {"model": _L0, "freeze": 8, "lora_rank": 0, "lr": 3.0e-3, "resolution": 224, "epochs": 10,
                         **IMAGE_FIXED, "augment": "none"},
        "probe-l1-224": {"model": _L1, "freeze": 8, "lora_rank": 0, "lr": 2.0e-3, "resolution": 224, "epochs": 10,
                         **IMAGE_FIXED, "augment": "none"},
        "probe-l2-224": {"model": _L2, "freeze": 8, "lora_rank": 0, "lr": 2.0e-3, "resolution": 224, "epochs": 10,
                         **IMAGE_FIXED, "augment": "none"},
        # partial fine-tunes above a cached frozen prefix
        "part-m128": {"model": _M, "freeze": 6, "lora_rank": 0, "lr": 2.0e-3, "resolution": 128, "epochs": 8,
                      **IMAGE_FIXED, "augment": "none"},
        "part-l0-160": {"model": _L0, "freeze": 6, "lora_rank": 0, "lr": 2.0e-3, "resolution": 160, "epochs": 8,
                        **IMAGE_FIXED, "augment": "none"},
        "part-l1-224": {"model": _L1, "freeze": 6, "lora_rank": 0, "lr": 1.0e-3, "resolution": 224, "epochs": 8,
                        **IMAGE_FIXED, "augment": "none"},
        # LoRA and full fine-tunes
        "lora-l0-160": {"model": _L0, "freeze": 3, "lora_rank": 8, "lr": 2.0e-3, "resolution": 160, "epochs": 8,
                        **IMAGE_FIXED, "augment": "flip+shift"},
        "lora-m96": {"model": _M, "freeze": 0, "lora_rank": 16, "lr": 3.0e-3, "resolution": 96, "epochs": 10,
                     **IMAGE_FIXED, "augment": "flip+shift"},
        "full-l0-128": {"model": _L0, "freeze": 0, "lora_rank": 0, "lr": 1.0e-3, "resolution": 128, "epochs": 8,
                        **IMAGE_FIXED, "augment": "flip+shift"},
        "full-l0-224": {"model": _L0, "freeze": 0, "lora_rank": 0, "lr": 5.0e-4, "resolution": 224, "epochs": 6,
                        **IMAGE_FIXED, "augment": "flip+shift"},
    },
    "text-classification": {
        # the built-in recipe's four start points before the portfolio (typed by hand on fine_foods)
        "hand-1": {"model": _T, "freeze": 5, "lora_rank": 0, "lr": 5.0e-4, "max_length": 128, "batch_size": 16,
                   "epochs": 2},
        "hand-2": {"model": _T, "freeze": 4, "lora_rank": 0, "lr": 3.0e-4, "max_length": 256, "batch_size": 16,
                   "epochs": 2},
        "hand-3": {"model": _T, "freeze": 0, "lora_rank": 0, "lr": 1.0e-4, "max_length": 256, "batch_size": 16,
                   "epochs": 2},
        "hand-4": {"model": _T, "freeze": 0, "lora_rank": 8, "lr": 1.0e-3, "max_length": 256, "batch_size": 16,
                   "epochs": 2},
        "probe-256": {"model": _T, "freeze": 7, "lora_rank": 0, "lr": 1.0e-3, "max_length": 256, "batch_size": 16,
                      "epochs": 3},
        "part6-128": {"model": _T, "freeze": 6, "lora_rank": 0, "lr": 5.0e-4, "max_length": 128, "batch_size": 16,
                      "epochs": 3},
        "part3-128": {"model": _T, "freeze": 3, "lora_rank": 0, "lr": 2.0e-4, "max_length": 128, "batch_size": 16,
                      "epochs": 2},
        "full-128-3ep": {"model": _T, "freeze": 0, "lora_rank": 0, "lr": 1.0e-4, "max_length": 128,
                         "batch_size": 16, "epochs": 3},
        "full-64-lowlr": {"model": _T, "freeze": 0, "lora_rank": 0, "lr": 5.0e-5, "max_length": 64,
                          "batch_size": 16, "epochs": 3},
        "lora16-128": {"model": _T, "freeze": 2, "lora_rank": 16, "lr": 5.0e-4, "max_length": 128,
                       "batch_size": 32, "epochs": 2},
    },
}

#: the sets per task: name -> (shared set, training cap, test cap); a cap is images per class (images) or rows
#: (text), ``None`` keeps the split whole. Subsamples are stratified and drawn with the seed.
SETS: dict[str, dict[str, tuple[str, int | None, int | None]]] = {
    "image-classification": {
        "fashion_mnist_50shot": ("image/fashion_mnist_100shot", 50, 30),
        "fashion_mnist_20shot": ("image/fashion_mnist_100shot", 20, 30),
        "fashion_mnist_10shot": ("image/fashion_mnist_100shot", 10, 30),
        "lfw_faces": ("image/lfw_faces", None, None),
        "gcompris_photos": ("image/gcompris_photos", None, None),
    },
    "text-classification": {
        "fine_foods_600rows": ("text/fine_foods", 600, 600),
        "jane_austen_600rows": ("text/jane_austen", 600, 600),
        "spam_assassin_600rows": ("text/spam_assassin", 600, 600),
        "fine_foods_200rows": ("text/fine_foods", 200, 600),
    },
}

COLUMNS = ("task", "set", "seed", "config", "model", "params", "val", "test", "seconds", "epochs", "curve",
           "state", "train", "val_size", "test_size", "classes", "device", "source")


def materialise(task: str, name: str, datasets: Path, dest: Path, seed: int) -> Path:
    """The folder of set ``name`` for ``seed``: the shared folder itself, or the subsample made for the seed."""
    import suite

    source, train_cap, test_cap = SETS[task][name]
    folder = datasets / source
    if not folder.exists():
        raise SystemExit(f"Error: {folder} does not exist; give --datasets FOLDER (the shared data sets) or --sets")
    if train_cap is None and test_cap is None:
        return folder
    shutil.rmtree(dest, ignore_errors=True)
    if task.startswith("image"):
        suite.subsample_images(folder, dest, train_cap or 10**9, seed)
        if test_cap is not None:  # the test split cut the same way: a class folder per class, test_cap images each
            whole = dest / "whole-test"
            (whole / "train").parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dest / "test", whole / "train")
            suite.subsample_images(whole, dest / "cut", test_cap, seed)
            shutil.move(dest / "cut" / "train", dest / "test")
            shutil.rmtree(whole)
            shutil.rmtree(dest / "cut")
        return dest
    suite.subsample_rows(folder, dest, train_cap, seed)
    if test_cap is not None:
        whole = dest / "whole-test"
        whole.mkdir()
        shutil.move(dest / "test.csv", whole / "train.csv")
        suite.subsample_rows(whole, dest / "cut", test_cap, seed)
        shutil.move(dest / "cut" / "train.csv", dest / "test.csv")
        shutil.rmtree(whole)
        shutil.rmtree(dest / "cut")
    return dest


def pool_recipe(task: str, pool: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The built-in recipe of ``task`` made to run exactly the pool: its configurations as start points, every range
    wide enough to hold them and none fitted to the data, and nothing that chooses or stops trials early."""
    from autotl.recipes import load_recipe

    raw = dict(load_recipe(task).raw)
    points = list(pool.values())
    space = {}
    for name, spec in (raw.get("space") or {}).items():
        spec = {k: v for k, v in spec.items() if k != "fit"}
        values = [p[name] for p in points if name in p]
        if "choices" in spec:
            spec["choices"] = sorted(set(spec["choices"]) | set(values), key=lambda v: (str(type(v)), v))
        elif values and "high" in spec:
            spec["low"], spec["high"] = min([spec["low"], *values]), max([spec["high"], *values])
        space[name] = spec
    raw.update(models=sorted({p["model"] for p in points}), space=space, start_with=points,
               sampler={"name": "random"}, pruner={"name": "none"}, prerank={"enabled": False},
               selection={"cv_below": 0})
    raw["description"] = f"benchmarks/metadata.py: the {len(points)} configurations of the {task} pool"
    return raw


def config_id(params: Mapping[str, Any], pool: Mapping[str, Mapping[str, Any]]) -> str:
    """The pool id of a trial's configuration (``converged:MODEL`` for a converged-head trial)."""
    if params.get("head_fit") == "converged":
        return f"converged:{params['model']}"
    for name, point in pool.items():
        if all(params.get(k) == v or (isinstance(v, float) and abs(params.get(k, 0) - v) < 1e-12)
               for k, v in point.items()):
            return name
    return "other"


def run_set(task: str, folder: Path, name: str, seed: int, work: Path) -> list[dict[str, Any]]:
    """One search over the pool on one set and seed; a row per trial."""
    import yaml
    from optuna.trial import TrialState

    import search_vs_baselines as svb
    from autotl.records import TrialRecord

    pool = POOLS[task]
    recipe = work / f"pool-{task}.yaml"
    recipe.write_text(yaml.safe_dump(pool_recipe(task, pool), sort_keys=False))
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    os.environ["AUTOTL_CACHE_DIR"] = str(work / "cache")
    shutil.rmtree(work / "cache", ignore_errors=True)
    models = {p["model"] for p in pool.values()}
    options = svb.SearchOptions(task=task, data=folder, out=out, recipe=str(recipe), seed=seed,
                                trials=len(pool) + len(models), keep_top=10**6, max_failures=None)
    search = svb.Search(options, svb.get_registry(), svb.ConsoleReporter())
    rows = []
    try:
        search.open()
        if not search.data.has_test:
            raise SystemExit(f"Error: {folder} has no test split; the meta-dataset scores every configuration on one")
        search.run()
        sizes = _sizes(search)
        for t in search.study.get_trials(deepcopy=False):
            params = TrialRecord.params(t)
            done = t.state == TrialState.COMPLETE
            curve = [round(v, 4) for _, v in sorted(t.intermediate_values.items())]
            rows.append({
                "task": task, "set": name, "seed": seed, "config": config_id(params, pool), "model": params["model"],
                "params": json.dumps({k: v for k, v in params.items() if k in _searched(pool, params)},
                                     sort_keys=True),
                "val": round(t.value, 4) if done else "", "test": svb.test_accuracy(search, t) if done else "",
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else "",
                "epochs": len(curve), "curve": json.dumps(curve), "state": t.state.name, **sizes,
                "device": _device(search.device),
                "source": "benchmarks/metadata.py"})
    finally:
        search.close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "cache", ignore_errors=True)
    return rows


def _searched(pool: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> set[str]:
    names = set().union(*(p.keys() for p in pool.values()))
    return names | ({"head_fit", "head_fit_c"} & set(params))


def _sizes(search) -> dict[str, Any]:
    """The set's training, validation and test sizes and its classes, as the search loaded it."""
    from autotl.selection import split_items

    report = search.data.report
    return {"train": split_items(report, ("train",)), "val_size": split_items(report, ("val",)),
            "test_size": split_items(report, ("test",)), "classes": len(search.data.label_names)}


def _device(device) -> str:
    """The device the costs were measured on: ``cpu (N threads)`` or the CUDA card's name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(POOLS), action="append",
                        help="the task(s) whose pool runs [default: both]")
    parser.add_argument("--sets", default=None, help="comma-separated set names [default: all of the task's]")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds per set [default: 1]")
    parser.add_argument("--seed", type=int, default=0, help="the first seed [default: 0]")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"the table [default: {TABLE.relative_to(HERE.parent)}]")
    parser.add_argument("--datasets", type=Path, default=DATASETS, help="the shared data sets' folder")
    parser.add_argument("--data", type=Path, help="a set of your own (with a test split) to run the pool on, "
                        "instead of the shared ones; needs --name and one --task")
    parser.add_argument("--name", help="the name --data gets in the table")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))

    if args.data is not None:
        if not args.name or not args.task or len(args.task) != 1:
            print("Error: --data needs --name NAME and one --task", file=sys.stderr)
            return 2
        if not args.data.exists():
            print(f"Error: {args.data} does not exist; give the folder (or file) of your set", file=sys.stderr)
            return 2
        SETS[args.task[0]] = {args.name: (str(args.data.resolve()), None, None)}
        args.sets, args.datasets = args.name, Path("/")
    if not args.datasets.is_dir():
        print(f"Error: {args.datasets} does not exist; give --datasets FOLDER (the shared data sets)", file=sys.stderr)
        return 2
    done = {(r["task"], r["set"], int(r["seed"])) for r in read_table(args.out) if r["source"] == "benchmarks/metadata.py"}
    tasks = args.task or sorted(POOLS)
    for task in tasks:
        names = args.sets.split(",") if args.sets else list(SETS[task])
        unknown = [n for n in names if n not in SETS[task]]
        if unknown and args.sets and len(tasks) == 1:
            print(f"Error: --sets: {', '.join(unknown)} not among {task}'s sets ({', '.join(SETS[task])})",
                  file=sys.stderr)
            return 2
        for name in (n for n in names if n in SETS[task]):
            for seed in range(args.seed, args.seed + args.seeds):
                if (task, name, seed) in done:
                    print(f"{task} {name} seed {seed}: in {args.out} already")
                    continue
                started = time.time()
                with tempfile.TemporaryDirectory(prefix="autotl-metadata-") as tmp:
                    folder = materialise(task, name, args.datasets, Path(tmp) / "data", seed)
                    rows = run_set(task, folder, name, seed, Path(tmp))
                append_rows(args.out, rows)
                best = max((r for r in rows if r["test"] != ""), key=lambda r: r["val"], default=None)
                print(f"{task} {name} seed {seed}: {len(rows)} trials in {time.time() - started:.0f} s; best on "
                      f"validation {best['config'] if best else '-'} (val {best['val'] if best else '-'}, test "
                      f"{best['test'] if best else '-'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
