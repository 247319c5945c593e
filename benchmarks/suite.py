"""A benchmark suite: autotl against three baselines on many data sets, equal budgets, several seeds.

    python benchmarks/suite.py [DATA ...] --task TASK --budget SECONDS --seeds N [--sets NAME,...]
                               [--arms ARM,...] [--out results.json] [--datasets FOLDER]

Per data set and seed, each arm scored by its accuracy on the set's test split (which chose nothing):

(a) ``autotl``: ``autotl search`` with the task's built-in recipe and every default, BUDGET seconds
    of wall time for opening the run and the trials (the selection on small data and its refit inside
    them), then the test score of the model it ships (its refit where the data is small), as recorded;
    the ablation from the same run (see :func:`autotl_arm`) is printed after the table;
(b) ``random``: plain Optuna random search over the same space, the same budget (its arm (b));
(c) ``probe``: the frozen features of the zoo model that the pre-ranking (autotl/transfer.py) puts
    first, at that model's preprocessing, and a scikit-learn logistic regression (C=1, fitted to
    convergence) on all the training data (the training split and the validation split together);
(d) ``tfidf``: text only: TF-IDF of word 1- and 2-grams and a logistic regression (C=1), fitted on
    all the training rows.

The sets: every folder DATA given, and, with no DATA (or the names picked by ``--sets``), the
defaults: every classification set of the task under the shared data sets (``--datasets``, by
default ``../shared/datasets`` beside the repository: ``image/*`` or ``text/*``) and few-shot
subsamples the suite makes of them in a temporary folder: 10 and 20 training images per class of
``fashion_mnist_100shot``; 200 and 500 training rows of ``fine_foods``. A subsample is stratified
and drawn with the repeat's seed (so each seed sees other images); its test split is kept whole.

Seeds are 0 to N-1 (``--seed`` moves the first): the split's shuffling, the samplers, every
initialisation and the subsample change with it. The table gives, per set and arm, the median test
accuracy over the seeds and its spread (min-max), each arm's wall time, and the arms' mean rank over
the sets (per set, rank by median, 1 = best, ties averaged; an arm is ranked only on the sets it
ran). The last line is one JSON object:
``{"sets": {NAME: {"autotl": ..., "random": ..., "probe": ..., "tfidf": ... or null}}, "mean_rank": {...}}``.

``--out FILE`` keeps every finished (set, seed, arm) in FILE as soon as it finishes; running again
with the same FILE skips what it holds and reports everything in it, so the long run can be split
by set (``--sets``) across sittings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import search_vs_baselines as svb

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parent.parent / "shared" / "datasets"  # ../shared/datasets seen from the repository
ARMS = ("autotl", "random", "probe", "tfidf")
MODALITY = {"image-classification": "image", "text-classification": "text"}
#: the few-shot subsamples: name -> (source set, kind, size): images per class, or training rows.
SUBSAMPLES = {
    "image-classification": {"fashion_mnist_10shot": ("fashion_mnist_100shot", "per_class", 10),
                             "fashion_mnist_20shot": ("fashion_mnist_100shot", "per_class", 20)},
    "text-classification": {"fine_foods_200rows": ("fine_foods", "rows", 200),
                            "fine_foods_500rows": ("fine_foods", "rows", 500)},
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# -- the sets ------------------------------------------------------------------------------------

def default_sets(task: str, datasets: Path) -> dict[str, Any]:
    """The default sets of ``task``: name -> a folder, or a subsample spec ``(source folder, kind, size)``."""
    folder = datasets / MODALITY[task]
    shared = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()} if folder.is_dir() else {}
    subsamples = {name: (shared[source], kind, size) for name, (source, kind, size) in SUBSAMPLES[task].items()
                  if source in shared}
    return {**shared, **subsamples}


def subsample_images(source: Path, dest: Path, per_class: int, seed: int) -> Path:
    """``per_class`` training images per class of ``source`` (seeded; all of a smaller class); test/ whole."""
    rng = random.Random(seed)
    for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        chosen = sorted(rng.sample(files, min(per_class, len(files))))
        (dest / "train" / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in chosen:
            shutil.copy2(f, dest / "train" / class_dir.name / f.name)
    if (source / "test").is_dir():
        shutil.copytree(source / "test", dest / "test")
    return dest


def subsample_rows(source: Path, dest: Path, rows: int, seed: int) -> Path:
    """``rows`` rows of ``source``'s train.csv, stratified by its ``label`` column and seeded; test.csv whole."""
    from sklearn.model_selection import train_test_split

    with open(source / "train.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        table = list(reader)
    if rows >= len(table):
        chosen = table
    else:
        labels = [r[header.index("label")] for r in table]
        chosen, _ = train_test_split(table, train_size=rows, stratify=labels, random_state=seed)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(chosen)
    if (source / "test.csv").is_file():
        shutil.copy2(source / "test.csv", dest / "test.csv")
    return dest


def materialise(spec: Any, dest: Path, seed: int) -> Path:
    """The folder of a set for one seed: the folder itself, or the subsample made for that seed."""
    if isinstance(spec, Path):
        return spec
    source, kind, size = spec
    shutil.rmtree(dest, ignore_errors=True)
    return (subsample_images if kind == "per_class" else subsample_rows)(source, dest, size, seed)


# -- the arms (c) and (d) -------------------------------------------------------------------------

def fit_and_score(train_x, train_y, test_x, test_y) -> tuple[float, int]:
    """Logistic regression (C=1, to convergence) fitted on the training rows: its test accuracy and iterations."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=10_000)
    model.fit(train_x, train_y)
    return float(np.mean(model.predict(test_x) == np.asarray(test_y))), int(np.max(model.n_iter_))


def tfidf_accuracy(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                   test_labels: Sequence[int]) -> float:
    """TF-IDF of word 1- and 2-grams + logistic regression (C=1), fitted on the training texts: test accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    train_x = vectorizer.fit_transform(train_texts)
    return fit_and_score(train_x, train_labels, vectorizer.transform(test_texts), test_labels)[0]


def open_search(task: str, data: Path, seed: int, models: list[str] | None = None,
                weights: Mapping[str, str] | None = None):
    """A Search with the task's built-in recipe and zoo (not opened), and the data loaded as a trial's is."""
    from autotl.plugins import get_registry
    from autotl.progress import Reporter
    from autotl.controller import Search, SearchOptions

    options = SearchOptions(task=task, data=data, out=Path(tempfile.gettempdir()), seed=seed, models=models,
                            weights=dict(weights or {}))
    search = Search(options, get_registry(), Reporter())
    search.resolve_zoo()
    search.data = search.task.load(data, seed=seed, val_fraction=search.recipe.val_fraction,
                                   options=search.recipe.data)
    return search


def probe_arm(task: str, data: Path, seed: int, *, models: list[str] | None = None,
              weights: Mapping[str, str] | None = None, say: Callable[[str], None] = lambda text: None) -> dict:
    """Arm (c): the pre-ranking's first model, its frozen features, logistic regression on train + val."""
    from autotl.transfer import extract_features, feature_params, rank_models

    started = time.time()
    search = open_search(task, data, seed, models, weights)
    if not search.data.has_test:
        raise SystemExit(f"Error: {data} has no test split; the suite scores every arm on it")
    rows = rank_models(search.task, search.data, search.zoo, search.recipe, search.device,
                       settings=search.recipe.prerank, seed=seed, say=say)
    top = rows[0]
    if top.rank is None:
        raise RuntimeError(f"the pre-ranking scored no model ({top.model}: {top.error})")
    backbone = search.zoo[top.model]
    params = feature_params(search.recipe, top.model)
    prepared = search.task.prepare(search.data, backbone, params)
    batch = int(search.recipe.prerank["batch_size"])
    train = [extract_features(backbone, split, search.device, batch) for split in (prepared.train, prepared.val)]
    labels = np.concatenate([prepared.train.labels.numpy(), prepared.val.labels.numpy()])
    test = extract_features(backbone, prepared.test, search.device, batch)
    acc, iterations = fit_and_score(np.concatenate(train), labels, test, prepared.test.labels.numpy())
    return {"test_acc": round(acc, 4), "seconds": round(time.time() - started, 1), "model": top.model,
            "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))},
            "train_rows": len(labels), "iterations": iterations}


def tfidf_arm(task: str, data: Path, seed: int) -> dict:
    """Arm (d): TF-IDF + logistic regression on all the training rows (the task's own reading of the files)."""
    from autotl.plugins import get_registry
    from autotl.recipes import load_recipe

    started = time.time()
    plugin = get_registry().tasks[task]
    recipe = load_recipe(task)
    loaded = plugin.load(data, seed=seed, val_fraction=recipe.val_fraction, options=recipe.data)
    if not loaded.has_test:
        raise SystemExit(f"Error: {data} has no test split; the suite scores every arm on it")
    texts, labels = [], []
    for split in ("train", "val"):
        items = plugin.split_items(loaded, split)
        texts += items[0]
        labels += items[1]
    test_texts, test_labels = plugin.split_items(loaded, "test")
    acc = tfidf_accuracy(texts, labels, test_texts, test_labels)
    return {"test_acc": round(acc, 4), "seconds": round(time.time() - started, 1), "train_rows": len(labels)}


def autotl_arm(task: str, data: Path, seed: int, budget: float, work: Path) -> dict:
    """Arm (a): ``autotl search`` as the command runs it, with every default (pre-ranking, converged-head trials, the
    selection on small data and its refit, the ensemble), a cold cache, BUDGET seconds for opening and the trials
    (the selection and refit inside them), then the test score of the model it ships, as recorded.

    The ablation, from the same run: the test accuracy of the trial best on validation (its own weights: no
    cross-validated selection, no refit), of the trial the selection chose (its own weights: no refit), of the single
    network autotl would ship (the refit where there is one), of the recorded ensemble, of what autotl ships (the
    ensemble where the search ships it, else the single network), and of the best converged-head trial by
    validation; and the seconds the selection, the refit and the ensemble took."""
    from autotl.leaderboard import best_trial
    from autotl.records import StudyRecord, TrialRecord

    out = work / "run-autotl"
    os.environ["AUTOTL_CACHE_DIR"] = str(work / "cache-autotl")
    options = svb.SearchOptions(task=task, data=data, out=out, recipe=task, time_budget=budget, seed=seed,
                                max_failures=None)
    search = svb.Search(options, svb.get_registry(), svb.ConsoleReporter())
    started = time.time()
    try:
        search.open()  # loading the data and pre-ranking count in the budget (it starts with open())
        search.run()
        searched = time.time() - started
        shipped = search.score_best_on_test()
        began = time.time()
        ensemble = search.ensemble()
        ensemble_s = time.time() - began
        elapsed = time.time() - started
        study, metric = search.study, search.metric
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == svb.TrialState.COMPLETE]
        sign = 1 if search.direction == "maximize" else -1
        val_best = max(complete, key=lambda t: sign * t.value) if complete else None
        chosen = best_trial(study)
        converged = [t for t in complete if TrialRecord.params(t).get("head_fit") == "converged"]
        converged_best = max(converged, key=lambda t: sign * t.value) if converged else None
        record = StudyRecord.from_study(study)
        selection, refit = record.selection or {}, record.refit or {}
        ablation = {
            "val_best": svb.test_accuracy(search, val_best) if val_best else None,
            "cv_choice": svb.test_accuracy(search, chosen) if chosen and selection else None,
            "single": round(shipped[f"test_{metric}"], 4) if shipped else None,
            "refit": shipped.get("weights") == "refit" if shipped else False,
            "ensemble_shipped": bool(ensemble and ensemble.get("shipped")),
            "ensemble": round(ensemble["test"], 4) if ensemble and ensemble.get("test") is not None
            and len(ensemble.get("members") or {}) > 1 else None,
            "ensemble_members": len((ensemble or {}).get("members") or {}),
            "converged": svb.test_accuracy(search, converged_best) if converged_best else None,
            "trials_s": round(searched - (selection.get("seconds") or 0) - (refit.get("duration_s") or 0), 1),
            "selection_s": selection.get("seconds"), "refit_s": refit.get("duration_s"),
            "ensemble_s": round(ensemble_s, 1), "cv_candidates": len(selection.get("candidates") or []),
        }
    finally:
        search.close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "cache-autotl", ignore_errors=True)
    states = [t.state.name for t in trials]
    ablation["shipped"] = ablation["ensemble"] if ablation["ensemble_shipped"] else ablation["single"]
    return {"test_acc": ablation["shipped"], "seconds": round(elapsed, 1), "trials": len(trials),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "val_acc": round(chosen.value, 4) if chosen else None,
            "chosen": TrialRecord.from_trial(chosen).config if chosen else None, "ablation": ablation}


def search_arm(arm: str, task: str, data: Path, seed: int, budget: float, work: Path) -> dict:
    """Arm (b): benchmarks/search_vs_baselines.py's, with a cold cache; the best trial on validation."""
    if arm == "autotl":
        return autotl_arm(task, data, seed, budget, work)
    recipes = svb.arm_recipes(task, work)
    out = work / f"run-{arm}"
    os.environ["AUTOTL_CACHE_DIR"] = str(work / f"cache-{arm}")
    try:
        result = svb.run_arm(arm, recipes[arm], SimpleNamespace(task=task, data=data, budget=budget, seed=seed), out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f"cache-{arm}", ignore_errors=True)
    best = result["incumbents"][-1] if result["incumbents"] else {}
    return {"test_acc": result["test_accuracy"], "seconds": result["seconds"], "trials": result["trials"],
            "complete": result["complete"], "pruned": result["pruned"], "failed": result["failed"],
            "val_acc": best.get("val_accuracy"), "chosen": best.get("params")}


# -- the summary -----------------------------------------------------------------------------------

def summarise(runs: Mapping[str, Mapping[str, Mapping[str, dict]]], arms: Sequence[str]) -> dict[str, dict]:
    """Per set and arm over the seeds: median, min, max of the test accuracy, the seeds, mean and total seconds."""
    out: dict[str, dict] = {}
    for name, seeds in runs.items():
        out[name] = {}
        for arm in arms:
            done = [seeds[s][arm] for s in seeds if arm in seeds[s]]
            accs = [r["test_acc"] for r in done if r.get("test_acc") is not None]
            out[name][arm] = None if not accs else {
                "median": round(statistics.median(accs), 4), "min": min(accs), "max": max(accs), "n": len(accs),
                "seconds": round(statistics.mean(r["seconds"] for r in done), 1),
                "total_s": round(sum(r["seconds"] for r in done), 1)}
    return out


def mean_ranks(medians: Mapping[str, Mapping[str, float | None]], arms: Sequence[str]) -> dict[str, float | None]:
    """Each arm's mean over the sets of its rank by median (1 = best, ties averaged); None if never ranked."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {arm: [] for arm in arms}
    for values in medians.values():
        present = [arm for arm in arms if values.get(arm) is not None]
        if not present:
            continue
        for arm, r in zip(present, rankdata([-values[arm] for arm in present], method="average")):
            ranks[arm].append(float(r))
    return {arm: round(statistics.mean(r), 3) if r else None for arm, r in ranks.items()}


def final_line(summary: Mapping[str, Mapping[str, dict | None]], arms: Sequence[str]) -> dict:
    """The last line: each set's median test accuracy per arm (null where not run), and the arms' mean rank."""
    sets = {name: {arm: (v[arm]["median"] if arm in arms and v.get(arm) else None) for arm in ARMS}
            for name, v in summary.items()}
    return {"sets": sets, "mean_rank": mean_ranks(sets, arms)}


ABLATION = ("val_best", "cv_choice", "single", "ensemble", "shipped", "converged")


def ablation_lines(runs: Mapping[str, Mapping[str, Mapping[str, dict]]]) -> list[str]:
    """Per set, the medians over the seeds of arm (a)'s ablation: the test accuracy of the trial best on validation,
    of the selection's choice (its own weights), of the model shipped (refit), of the ensemble, of the best
    converged-head trial; and the median seconds of the trials, the selection, the refit and the ensemble."""
    def med(values: list) -> str:
        values = [v for v in values if v is not None]
        return f"{statistics.median(values):.4f}" if values else "-"

    def secs(values: list) -> str:
        values = [v for v in values if v is not None]
        return f"{statistics.median(values):.0f}" if values else "-"

    rows = {name: [r["autotl"]["ablation"] for r in seeds.values() if "ablation" in r.get("autotl", {})]
            for name, seeds in runs.items()}
    rows = {name: done for name, done in rows.items() if done}
    if not rows:
        return []
    width = max([len("set")] + [len(n) for n in rows])
    lines = ["", "autotl's ablation (median test accuracy over the seeds, from the same runs; seconds: median per run)",
             f"{'set':<{width}}  {'val-best':>8} {'cv-pick':>8} {'single':>8} {'ensemble':>8} {'shipped':>8} "
             f"{'converged':>9}"
             f" {'trials s':>8} {'select s':>8} {'refit s':>7} {'ens s':>6}"]
    for name, done in rows.items():
        cells = [med([d.get(k) for d in done]) for k in ABLATION]
        times = [secs([d.get(k) for d in done]) for k in ("trials_s", "selection_s", "refit_s", "ensemble_s")]
        lines.append(f"{name:<{width}}  {cells[0]:>8} {cells[1]:>8} {cells[2]:>8} {cells[3]:>8} {cells[4]:>8} "
                     f"{cells[5]:>9}"
                     f" {times[0]:>8} {times[1]:>8} {times[2]:>7} {times[3]:>6}")
    lines.append("val-best: the trial best on validation, its own weights (no selection, no refit); cv-pick: the trial "
                 "the cross-validation chose, its own weights; single: the single network autotl would ship (its "
                 "refit on train+val where the data is small); ensemble: the recorded ensemble (- where it is one "
                 "trial); shipped: what autotl ships (the ensemble where selected on out-of-fold outputs, else the "
                 "single network); converged: the best converged-head trial by validation")
    return lines


def table(summary: Mapping[str, Mapping[str, dict | None]], final: dict, arms: Sequence[str]) -> list[str]:
    width = max([len("set")] + [len(n) for n in summary])
    lines = [f"{'set':<{width}}  {'arm':<7} {'median':>7} {'min-max':>13} {'seeds':>5} {'s/run':>7} {'rank':>5}"]
    for name, values in summary.items():
        present = {arm: v["median"] for arm, v in values.items() if v}
        ranked = mean_ranks({name: present}, list(present))
        for arm in arms:
            v = values.get(arm)
            if v is None:
                continue
            lines.append(f"{name:<{width}}  {arm:<7} {v['median']:>7.4f} {v['min']:>6.4f}-{v['max']:<6.4f} "
                         f"{v['n']:>5d} {v['seconds']:>7.1f} {ranked[arm]:>5.1f}")
    lines.append("mean rank over the sets (1 = best): " + ", ".join(
        f"{arm} {'-' if r is None else f'{r:.2f}'}" for arm, r in final["mean_rank"].items()))
    seconds = {arm: sum(v[arm]["total_s"] for v in summary.values() if v.get(arm)) for arm in arms}
    lines.append("wall time per arm, all sets and seeds: "
                 + ", ".join(f"{arm} {s:.0f} s" for arm, s in seconds.items()))
    return lines


# -- the results file ------------------------------------------------------------------------------

def load_results(path: Path | None, task: str, budget: float) -> dict:
    fresh = {"task": task, "budget_s": budget, "runs": {}}
    if path is None or not path.is_file():
        return fresh
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"Error: --out {path} is not a results file of this suite ({exc}); give another --out")
    if results.get("task") != task or results.get("budget_s") != budget:
        raise SystemExit(f"Error: --out {path} holds a {results.get('task')} run at {results.get('budget_s')} s per "
                         f"arm, not {task} at {budget:g} s; give another --out or the same --task and --budget")
    return results


def save_results(path: Path | None, results: dict) -> None:
    if path is None:
        return
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(results, indent=1))
    part.replace(path)  # a sitting killed mid-write leaves the previous file whole


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="*", help="data folders to add (default: the shared sets of TASK)")
    parser.add_argument("--task", required=True, choices=sorted(MODALITY))
    parser.add_argument("--budget", type=float, required=True, help="seconds of wall time for arms (a) and (b)")
    parser.add_argument("--seeds", type=int, default=3, help="repeats per set, seeds SEED .. SEED+N-1 (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--sets", help="comma-separated names among the default sets (with DATA: added to them)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    parser.add_argument("--out", type=Path, help="a JSON results file to keep every run in, and to resume from")
    parser.add_argument("--datasets", type=Path, default=DATASETS, help=f"the shared data sets (default {DATASETS})")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or not set(arms) <= set(ARMS):
        parser.error(f"--arms takes {', '.join(ARMS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.task != "text-classification":
        arms = [a for a in arms if a != "tfidf"]

    sets: dict[str, Any] = {}
    if not args.data or args.sets:
        if not (args.datasets / MODALITY[args.task]).is_dir():
            print(f"Error: the shared data sets are not in {args.datasets} (no {MODALITY[args.task]}/ folder); "
                  "give DATA folders, or --datasets FOLDER", file=sys.stderr)
            return 2
        defaults = default_sets(args.task, args.datasets)
        picked = [n.strip() for n in (args.sets or "").split(",") if n.strip()] or list(defaults)
        unknown = [n for n in picked if n not in defaults]
        if unknown:
            parser.error(f"--sets: unknown {', '.join(unknown)}; the sets of {args.task}: {', '.join(defaults)}")
        sets.update({n: defaults[n] for n in picked})
    for folder in args.data:
        if not folder.is_dir():
            parser.error(f"DATA {folder} is not a folder")
        name = folder.resolve().name
        while name in sets:
            name += "+"
        sets[name] = folder

    from autotl.progress import quiet_libraries

    quiet_libraries()
    results = load_results(args.out, args.task, args.budget)
    work = Path(tempfile.mkdtemp(prefix="autotl-suite-"))
    try:
        for name, spec in sets.items():
            for seed in range(args.seed, args.seed + args.seeds):
                done = results["runs"].setdefault(name, {}).setdefault(str(seed), {})
                todo = [arm for arm in arms if arm not in done]
                if not todo:
                    continue
                folder = materialise(spec, work / "data" / name, seed)
                for arm in todo:
                    print(f"=== {name}, seed {seed}, arm {arm}", file=sys.stderr, flush=True)
                    if arm == "probe":
                        done[arm] = probe_arm(args.task, folder, seed, say=lambda t: print(t, file=sys.stderr))
                    elif arm == "tfidf":
                        done[arm] = tfidf_arm(args.task, folder, seed)
                    else:
                        done[arm] = search_arm(arm, args.task, folder, seed, args.budget, work)
                    print(f"=== {name}, seed {seed}, arm {arm}: {json.dumps(done[arm])}", file=sys.stderr, flush=True)
                    save_results(args.out, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    recorded = {arm for seeds in results["runs"].values() for done in seeds.values() for arm in done}
    every = [a for a in ARMS if a in arms or a in recorded]  # this sitting's arms and those of earlier ones
    summary = summarise({n: s for n, s in results["runs"].items() if any(s.values())}, every)
    final = final_line(summary, every)
    print(f"\n{args.task}, {args.budget:g} s per search arm; test accuracy over the seeds (median, min-max); "
          "rank per set by median")
    print("\n".join(table(summary, final, every) + ablation_lines(results["runs"])))
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
