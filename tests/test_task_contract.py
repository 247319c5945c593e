"""The task contract: the core names no metric, loss or task type, and searches, ranks and keeps through the target.

Three checks: the core's source (every module but the conformance kits) names no metric, loss or kind of label,
so everything task-specific reaches it through :class:`autotl.Target`; a target whose metric is minimised (a
number per item, defined here) runs a search that minimises it everywhere (the study, the leaderboard,
``best``, the weights kept); and a recipe's ``metric:`` changes what a classification search ranks by.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny import TINY, make_image_folder, save_tiny_weights

import autotl
from autotl import Target, hookimpl
from autotl.cli import cli
from autotl.errors import RunError, UsageError
from autotl.leaderboard import choose_trial
from autotl.plugins import collect, make_manager
from autotl.records import StudyRecord, TrialRecord
from autotl_image import ImageClassification

ROOT = Path(__file__).resolve().parent.parent
RECIPE = Path(__file__).parent / "data" / "tiny-image.yaml"
OLD_RUN = Path(__file__).parent / "data" / "run-6f673bc"

# -- 1. the core names no metric, loss or task type -------------------------------------------------

#: words that name a metric, a loss or a kind of label: only a task's target (a plugin) may use them. A word
#: matches a whole word of the text or a whole part of an identifier (split at ``_``, digits kept with their
#: letters, and at camelCase humps), case-insensitive; the two-word ones match as consecutive parts
#: (``cross_entropy``, ``cross-entropy``, "cross entropy"). ``token`` counts alone, the way a task type says
#: it (a tag per token); ``tokens``, ``tokenizer`` and ``tokenise`` are what a text backbone feeds on, and pass.
WORDS = {"accuracy", "softmax", "argmax", "rmse", "mae", "pearson", "f1", "classification", "regression",
         "multilabel", "token", "crossentropy", "logloss"}
PAIRS = {("cross", "entropy"), ("log", "loss"), ("label", "smoothing"), ("multi", "label")}
#: the core modules that may name them: the conformance kits, which check plugins against known tasks.
EXEMPT = ("autotl/testing.py", "autotl/kit/")


def words(text: str) -> list[str]:
    """The words of ``text``, identifiers split into their parts, lower-cased, in order."""
    parts = []
    for chunk in re.split(r"[^A-Za-z0-9]+", text):
        parts += [p.lower() for p in re.findall(r"[A-Z]+[0-9]*(?![a-z])|[A-Z]?[a-z]+[0-9]*|[0-9]+", chunk)]
    return parts


def named(text: str) -> list[str]:
    """What of :data:`WORDS` and :data:`PAIRS` ``text`` names."""
    parts = words(text)
    return [w for w in parts if w in WORDS] + [" ".join(p) for p in zip(parts, parts[1:]) if p in PAIRS]


def core_naming() -> dict[str, list[str]]:
    """{core module: ``line: words``} for every line of a core module that names a metric, loss or task type."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "autotl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if named(line):
                found.setdefault(rel, []).append(f"{number}: {', '.join(named(line))}")
    return found


@pytest.mark.parametrize("text, expected", [
    ("loss = F.cross_entropy(x, y)", ["cross entropy"]), ("the cross-entropy loss", ["cross entropy"]),
    ("val_accuracy", ["accuracy"]), ("macroF1", ["f1"]), ("macro_f1 and RMSE", ["f1", "rmse"]),
    ("a tag per token", ["token"]), ("secrets.token_hex(4)", ["token"]), ("image-classification", ["classification"]),
    ("multi-label thresholds", ["multi label"]), ("params['label_smoothing']", ["label smoothing"]),
    ("the tokenizer's tokens", []), ("tokenising", []), ("maelstrom", []), ("class indices", []),
    ("f10 score", []), ("logits", []), ("prefix", []),
])
def test_the_scan_matches_whole_words_and_identifier_parts(text, expected):
    assert sorted(named(text)) == sorted(expected)


def test_the_core_names_no_metric_loss_or_task_type():
    found = core_naming()
    assert not found, "the core names a metric, loss or task type (route it through autotl.Target):\n" + \
        "\n".join(f"{module}: {'; '.join(lines)}" for module, lines in found.items())


# -- 2. a target whose metric is minimised -------------------------------------------------------

class ClassNumber(Target):
    """A number per item (the class index read as a value), trained by squared error about the training mean."""

    metrics = {"squared_error": "minimize", "abs_error": "minimize"}
    primary = "squared_error"

    def width(self, label_names):
        return 1

    def fit(self, labels):
        return {"mean": float(labels.float().mean())}

    def loss(self, outputs, labels, calibration, params):
        return F.mse_loss(outputs[:, 0] + calibration["mean"], labels.float())

    def score(self, outputs, labels, calibration):
        if not len(labels):
            return {name: float("nan") for name in self.metrics}
        error = outputs[:, 0] + calibration["mean"] - labels.float()
        return {"squared_error": float((error ** 2).mean()), "abs_error": float(error.abs().mean())}

    def decode(self, outputs, split, calibration, label_names, top_k=1):
        return [{"value": float(v)} for v in outputs[:, 0] + calibration["mean"]]


class ClassNumberTask(ImageClassification):
    name = "tiny-class-number"
    target = ClassNumber()


class ClassNumberPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(ClassNumberTask())


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def recipe(tmp_path: Path, task: str, extra: str = "") -> Path:
    path = tmp_path / f"{task}.yaml"
    path.write_text(RECIPE.read_text().replace("task: image-classification", f"task: {task}") + extra)
    return path


def test_a_minimised_metric_is_minimised_by_the_study_leaderboard_best_and_keep_top(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    registry = collect(make_manager(extra_plugins=[ClassNumberPlugin()]))
    out = tmp_path / "run"
    result = autotl.search(data, task=ClassNumberTask.name, registry=registry, out=out,
                           recipe=str(recipe(tmp_path, ClassNumberTask.name, "selection: {cv_below: 0}\n")),
                           models=[TINY], weights={TINY: str(weights)}, trials=3, keep_top=1, seed=0)
    run = result.run
    assert run.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert (run.metric, run.direction, run.width) == ("squared_error", "minimize", 1)
    complete = run.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    values = [t.value for t in complete]
    assert len(complete) == 3 and len(set(values)) == 3, values
    for t in complete:
        record = TrialRecord.from_trial(t)
        assert record.val_metrics["squared_error"] == t.value and set(record.val_metrics) == set(ClassNumber.metrics)
        assert record.calibration["mean"] == pytest.approx(1.0, abs=0.2)  # three classes, stratified: about 1
        assert min(record.val_curve) == pytest.approx(t.value, abs=1e-4)  # the best epoch is the lowest
    best = run.best_trial()
    assert best.value == min(values)
    kept = {t.number for t in complete if t.user_attrs.get("weights") and (out / t.user_attrs["weights"]).is_file()}
    assert kept == {best.number}  # --keep-top 1 keeps the lowest
    assert result.test_score["trial"] == best.number
    assert set(result.test_score["test_metrics"]) == {"squared_error", "abs_error"}

    code, output = run_cli("best", out, "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["number"] == best.number and summary["val_squared_error"] == min(values)
    assert (summary["metric"], summary["direction"]) == ("squared_error", "minimize")
    assert summary["val_metrics"]["abs_error"] == TrialRecord.from_trial(best).val_metrics["abs_error"]
    assert summary["test_squared_error"] == summary["test_metrics"]["squared_error"] == run.test_score(best)
    assert "val_accuracy" not in summary and "test_accuracy" not in summary

    code, output = run_cli("trials", out)
    assert code == 0, output
    assert "val squared_error" in output and f"Best trial {best.number}: val squared_error {best.value:.4f}" in output
    rows = [line.strip("│ ") for line in output.splitlines() if "complete" in line]
    assert rows[0].startswith(f"★ │ {best.number} │")  # the table lists the lowest first

    second = sorted(values)[1]
    choice = choose_trial(run.study, within=second - best.value + 1e-9)
    assert choice.trial.value in (best.value, second) and "among the 2 trial(s)" in choice.reason


def test_a_target_with_nothing_to_rank_skips_the_pre_ranking_and_says_why(tmp_path, tiny_backbone):
    from autotl.recipes import parse_recipe
    from autotl.transfer import prerank_study

    task = ClassNumberTask()
    data = task.load(make_image_folder(tmp_path / "data", per_class=4), seed=0, val_fraction=0.25, options={})
    said = []
    study = optuna.create_study()
    raw = {"task": task.name, "fixed": {"lr": 0.01, "resolution": 32}}
    points = [{"model": "b"}, {"model": "a"}]
    planned = prerank_study(study, task, data, {"a": tiny_backbone, "b": tiny_backbone}, parse_recipe(raw, "test"), points,
                            {"a": 2, "b": 2}, torch.device("cpu"), say=said.append)
    assert planned == points  # the zoo's order, start points untouched
    skipped = StudyRecord.from_study(study).prerank_skipped
    assert "tiny-class-number" in skipped and "rankable() is None" in skipped
    assert any(line.startswith("Pre-ranking skipped") for line in said)
    assert StudyRecord.from_study(study).transferability is None


# -- 3. the recipe's metric -------------------------------------------------------------------------

def imbalanced_folder(root: Path) -> Path:
    """The tiny classes with the third one rare in training, where balanced and plain accuracy part."""
    data = make_image_folder(root, per_class=12)
    for path in sorted((data / "train" / "striped").iterdir())[4:]:
        path.unlink()
    return data


def test_the_recipes_metric_decides_what_a_search_ranks_by(tmp_path):
    data = imbalanced_folder(tmp_path / "data")
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    path = recipe(tmp_path, "image-classification", "metric: balanced_accuracy\n")
    out = tmp_path / "run"
    code, output = run_cli("search", "--task", "image-classification", data, "--out", out, "--recipe", path,
                           "--models", TINY, "--weights", f"{TINY}={weights}", "--trials", 3)
    assert code == 0, output
    assert "val balanced_accuracy" in output
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{out / 'study.db'}")
    assert StudyRecord.from_study(study).metric == "balanced_accuracy"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    recorded = [TrialRecord.from_trial(t).val_metrics for t in complete]
    assert [t.value for t in complete] == [m["balanced_accuracy"] for m in recorded]
    assert any(m["balanced_accuracy"] != m["accuracy"] for m in recorded)  # the two part on these classes

    code, output = run_cli("best", out, "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert (summary["metric"], summary["direction"]) == ("balanced_accuracy", "maximize")
    assert summary["val_balanced_accuracy"] == max(t.value for t in complete)
    assert summary["test_balanced_accuracy"] == summary["test_metrics"]["balanced_accuracy"]
    assert "val_accuracy" not in summary

    # resuming with the recipe's metric changed is refused: the study ranks by one metric
    other = recipe(tmp_path, "image-classification", "metric: macro_f1\n")
    code, output = run_cli("search", "--task", "image-classification", data, "--out", out, "--recipe", other,
                           "--models", TINY, "--weights", f"{TINY}={weights}", "--trials", 4)
    assert code == RunError.exit_code, output
    assert "the recipe's metric (macro_f1) differs from the one study 'autotl'" in output
    assert "ranks its trials by (balanced_accuracy)" in output and "Traceback" not in output


def test_a_metric_the_target_has_not_is_refused_naming_those_it_has(tmp_path):
    path = recipe(tmp_path, "image-classification", "metric: rmse\n")
    code, output = run_cli("search", "--task", "image-classification", tmp_path / "data", "--out", tmp_path / "run",
                           "--recipe", path)
    assert code == UsageError.exit_code, output
    assert "metric: 'rmse' is not a metric of task 'image-classification'" in output
    assert "use one of accuracy, balanced_accuracy, macro_f1, log_loss" in output
    assert not (tmp_path / "run").exists()


def test_a_study_begun_before_metrics_were_recorded_resumes_with_its_primary_named(tmp_path):
    """The committed old run (autotl 6f673bc) records no metric: it ranks by the target's primary, and a recipe
    naming that metric explicitly resumes it; one naming another is refused."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    data = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{run / 'study.db'}")
    assert StudyRecord.from_study(study).metric is None
    recorded = dict(study.user_attrs["recipe"])
    for metric, code_expected in (("balanced_accuracy", RunError.exit_code), ("accuracy", 0)):
        path = tmp_path / f"{metric}.yaml"
        path.write_text(json.dumps({**recorded, "metric": metric}))  # JSON is YAML
        code, output = run_cli("search", "--task", "image-classification", data, "--out", run, "--recipe", path,
                               "--weights", f"{TINY}={weights}", "--trials", 4)
        assert code == code_expected, output
    assert "Resuming study 'autotl'" in output and "3 finished trial(s) kept" in output
    code, output = run_cli("best", run, "--json")
    summary = json.loads(output)
    assert summary["metric"] == "accuracy" and summary["test_accuracy"] == pytest.approx(0.6667, abs=1e-3)
    rows = json.loads(run_cli("trials", run, "--json")[1])
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    assert set(rows[3]["val_metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "log_loss"}
    assert rows[0]["val_metrics"] == {}  # recorded before the metrics were


def test_per_position_outputs_are_right_padded_with_zeros_to_the_widest_batch():
    """A network giving an output per position may give batches of different widths: the split's outputs are
    right-padded with zeros along the positions, in the split's order."""
    from autotl import TensorSplit
    from autotl.inference import predict_outputs

    class Positions(torch.nn.Module):
        def forward(self, x):  # x[:, 0] holds each item's width; a batch is as wide as its widest item
            width = int(x[:, 0].max())
            return torch.ones(len(x), width, 2) * x[:, :1, None]

    split = TensorSplit(torch.tensor([[2.0], [1.0], [4.0], [3.0], [1.0]]), torch.zeros(5), random_augmentation=False)
    outputs = predict_outputs(Positions(), split, torch.device("cpu"), batch_size=2)
    assert outputs.shape == (5, 4, 2) and outputs.dtype == torch.float32
    assert outputs[0, :2].eq(2).all() and outputs[0, 2:].eq(0).all()  # batch 1 was 2 wide: zeros after
    assert outputs[2].eq(4).all() and outputs[4, :1].eq(1).all() and outputs[4, 1:].eq(0).all()
    flat = predict_outputs(torch.nn.Linear(1, 3), split, torch.device("cpu"), batch_size=2)
    assert flat.shape == (5, 3)
