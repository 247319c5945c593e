"""A portfolio of start points learned from the meta-dataset, its leave-one-set-out replay, and the recipes it writes.

    python benchmarks/portfolio.py [--table benchmarks/results/metadata.csv] [--task TASK] [--size 4]
                                   [--cost-weight 1.0] [--write]

The table is `benchmarks/metadata.py`'s: every configuration of a fixed pool trained on many sets and seeds, with its
validation score, its test score and its cost. From it, per task:

- **The portfolio** (greedy, as auto-sklearn 2.0 builds its portfolios): start from what every search runs anyway
  (the converged-head trials, one per model), then add the configuration that lowers the mean regret over the sets
  most per unit of cost, then the next, up to ``--size`` configurations or until none lowers it. The regret on a
  set is the best test score of the pool there minus the best test score the portfolio offers (a point of accuracy
  is 0.01): the sets' validation splits are as small as 20 items, and a portfolio built on which member validation
  picks would fit their noise. A set's regret is the mean over its seeds, the portfolio's the mean over its sets.
  The cost of a configuration on a set is its
  seconds over the median configuration's there; the gain is divided by the mean of that over the sets raised to
  ``--cost-weight`` (0: regret alone; 1: regret lowered per second), so a cheap configuration that helps comes first.
- **The replay, leave one set out**: the portfolio learned without a set (on every other set of the task), replayed
  on that set's recorded scores after 1, 2 and 4 start points, against the start points the recipes had before
  (the pool's ``hand-*`` configurations, typed by hand on one set), and the seconds those start points took there:
  the regret of what they offer, and of the one the validation split picks, as a search hands it over.
- **How well a short fidelity ranks**: Spearman's rho between the configurations' validation scores after their first
  epoch(s) and at their best epoch, and between validation and test, per set (median over seeds).
- ``--write``: the portfolio learned on every set becomes the built-in recipe's ``start_with``
  (``recipes/<task>.yaml``), with a comment saying where it comes from; no start point there is typed by hand.
  ``tests/test_portfolio.py`` checks that the recipes hold what the committed table gives.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent
TABLE = HERE / "results" / "metadata.csv"
RECIPES = HERE.parent / "recipes"
SIZE = 4
COST_WEIGHT = 1.0
FIRST_RUNG = {"image-classification": 2, "text-classification": 1}  # the recipes' Hyperband min_resource
REPLAY_AT = (1, 2, 4)


@dataclass
class Scores:
    """One set's recorded trials: per seed, config -> (val, test, seconds), and each config's start point."""

    name: str
    seeds: dict[int, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    curves: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def configs(self) -> set[str]:
        return set().union(*(s.keys() for s in self.seeds.values())) if self.seeds else set()


def read(table: Path, task: str) -> tuple[dict[str, Scores], dict[str, dict[str, Any]]]:
    """The table's complete trials of ``task`` from benchmarks/metadata.py's pool: per set its scores, and each
    configuration's start point (its searched parameters)."""
    sets: dict[str, Scores] = {}
    params: dict[str, dict[str, Any]] = {}
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["task"] != task or row["state"] != "COMPLETE" or row["config"] in ("other", "run") \
                    or row["test"] == "":
                continue
            scores = sets.setdefault(row["set"], Scores(row["set"]))
            seed = int(row["seed"])
            scores.seeds.setdefault(seed, {})[row["config"]] = (float(row["val"]), float(row["test"]),
                                                                 float(row["seconds"]))
            scores.curves.setdefault(seed, {})[row["config"]] = json.loads(row["curve"] or "[]")
            params.setdefault(row["config"], json.loads(row["params"]))
    return sets, params


def is_base(config: str) -> bool:
    """Whether every search runs ``config`` before its start points (a converged-head trial)."""
    return config.startswith("converged:")


def picked(trials: Mapping[str, tuple[float, float, float]], members: Sequence[str],
           by: str = "val") -> tuple[float, float]:
    """The test score of the member a search hands over and the seconds all of them took: ``by="val"``, the member
    best on validation (the first of equals, in running order: the converged heads, then the members in order), as
    a search picks it; ``by="test"``, the best test score among them (a perfect pick: what the portfolio offers)."""
    order = sorted((c for c in trials if is_base(c))) + [c for c in members if c in trials]
    key = 0 if by == "val" else 1
    best = None
    for config in order:
        if best is None or trials[config][key] > trials[best][key]:
            best = config
    return (trials[best][1] if best else 0.0), sum(trials[c][2] for c in order)


def regret(scores: Scores, members: Sequence[str], by: str = "val") -> float:
    """The set's regret of a portfolio (mean over the seeds): the pool's best test score minus the test score of the
    member picked ``by`` validation (as a search picks) or ``by`` test (the best it offers)."""
    values = []
    for trials in scores.seeds.values():
        oracle = max(t[1] for t in trials.values())
        values.append(oracle - picked(trials, members, by)[0])
    return statistics.mean(values)


def seconds(scores: Scores, members: Sequence[str]) -> float:
    """The seconds the converged heads and ``members`` took on the set (mean over the seeds)."""
    return statistics.mean(picked(trials, members)[1] for trials in scores.seeds.values())


def relative_cost(sets: Mapping[str, Scores], config: str) -> float:
    """``config``'s seconds over the median configuration's, per set and seed, averaged."""
    ratios = []
    for scores in sets.values():
        for trials in scores.seeds.values():
            if config in trials:
                median = statistics.median(t[2] for t in trials.values()) or 1.0
                ratios.append(max(trials[config][2], 0.1) / median)
    return statistics.mean(ratios) if ratios else float("inf")


def greedy(sets: Mapping[str, Scores], size: int = SIZE, cost_weight: float = COST_WEIGHT) -> list[str]:
    """The portfolio: configurations added one at a time, each the one that lowers the mean regret over ``sets``
    most per (relative cost ** cost_weight), while one lowers it, up to ``size``. The regret is the best the
    portfolio offers (``by="test"``: the sets' test splits are large, their validation splits as small as 20 items,
    and a pick by validation would fit the portfolio to that noise); the replay reports both."""
    candidates = sorted(c for c in set().union(*(s.configs() for s in sets.values())) if not is_base(c)
                        and all(c in trials for s in sets.values() for trials in s.seeds.values()))
    members: list[str] = []

    def mean_regret(chosen: Sequence[str]) -> float:
        return statistics.mean(regret(s, chosen, by="test") for s in sets.values())

    now = mean_regret(members)
    while len(members) < size:
        gains = []
        for config in candidates:
            if config in members:
                continue
            gain = now - mean_regret(members + [config])
            if gain > 1e-9:
                gains.append((gain / relative_cost(sets, config) ** cost_weight, gain, config))
        if not gains:
            break
        _, gain, config = max(gains, key=lambda g: (g[0], g[1]))  # the first of equals in name order
        members.append(config)
        now -= gain
    return members


def leave_one_out(sets: Mapping[str, Scores], hand: Sequence[str], size: int = SIZE,
                  cost_weight: float = COST_WEIGHT) -> dict[str, dict[str, Any]]:
    """Per set: the portfolio learned on the other sets, and its and the hand-typed start points' regret and seconds
    there after 1, 2 and 4 start points."""
    out = {}
    for name, scores in sets.items():
        learned = greedy({n: s for n, s in sets.items() if n != name}, size, cost_weight)
        row: dict[str, Any] = {"portfolio": learned}
        for label, points in (("learned", learned), ("hand", list(hand))):
            row[label] = {k: {"regret": round(regret(scores, points[:k]), 4),
                              "offered": round(regret(scores, points[:k], by="test"), 4),
                              "seconds": round(seconds(scores, points[:k]), 1)} for k in REPLAY_AT}
        out[name] = row
    return out


def rank_agreement(scores: Scores, rung: int) -> dict[str, float | None]:
    """Spearman's rho (median over the seeds) between the configurations' validation after ``rung`` epochs and at
    their best epoch, and between their validation and test scores."""
    import warnings

    from scipy.stats import spearmanr

    warnings.filterwarnings("ignore", message="An input array is constant")  # all equal: rho undefined, left out

    early, val_test = [], []
    for seed, trials in scores.seeds.items():
        curves = scores.curves.get(seed, {})
        trained = [c for c in trials if len(curves.get(c, [])) >= rung]
        if len(trained) >= 3:
            rho = spearmanr([curves[c][rung - 1] for c in trained], [trials[c][0] for c in trained]).statistic
            if rho == rho:
                early.append(rho)
        rho = spearmanr([t[0] for t in trials.values()], [t[1] for t in trials.values()]).statistic
        if rho == rho:
            val_test.append(rho)
    return {"early_vs_final": round(statistics.median(early), 3) if early else None,
            "val_vs_test": round(statistics.median(val_test), 3) if val_test else None}


# -- the recipes ---------------------------------------------------------------------------------------------

BLOCK = re.compile(r"^# Trials run first.*?^start_with:\n(?:  - [^\n]*\n)*", re.S | re.M)


def start_with_block(task: str, points: Sequence[Mapping[str, Any]], sets: Mapping[str, Scores],
                     members: Sequence[str]) -> str:
    """The recipe's ``start_with`` section and the comment that says where it comes from."""
    seeds = sorted({seed for s in sets.values() for seed in s.seeds})
    configs = len(set().union(*(s.configs() for s in sets.values())))

    def offered(chosen: Sequence[str]) -> float:
        return statistics.mean(regret(s, chosen, by="test") for s in sets.values())

    lines = [
        "# Trials run first, after the converged heads, before the sampler takes over: a portfolio learned by",
        "# benchmarks/portfolio.py from benchmarks/results/metadata.csv (benchmarks/metadata.py: "
        f"{len(sets)} sets x {configs}",
        f"# configurations x {len(seeds)} seed(s)): each the configuration that lowered the mean regret over the sets "
        "most",
        "# per second (regret: the pool's best test score on a set minus the best these offer). Written by",
        "# `python benchmarks/portfolio.py --write`; edit a copy, not this list (docs/recipes.md). Mean regret:",
        f"#   the converged heads alone: {offered([]):.4f}",
    ]
    for i, config in enumerate(members):
        lines.append(f"#   + {config}: {offered(members[:i + 1]):.4f}")
    lines.append("start_with:")
    for point in points:
        items = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in point.items())
        lines.append(f"  - {{{items}}}")
    return "\n".join(lines) + "\n"


def _yaml_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e+") if value < 0.01 else repr(value)
    return str(value)


def write_recipe(path: Path, block: str) -> None:
    """``path`` with its ``start_with`` section (and the comment above it) replaced by ``block``."""
    text = path.read_text()
    if not BLOCK.search(text):
        raise SystemExit(f"Error: {path} has no '# Trials run first' comment followed by start_with: to replace")
    path.write_text(BLOCK.sub(lambda _: block, text, count=1))


def portfolio_points(task: str, table: Path = TABLE, size: int = SIZE,
                     cost_weight: float = COST_WEIGHT) -> tuple[list[str], list[dict[str, Any]]]:
    """The portfolio learned on every set of the table, as configuration ids and as start points."""
    sets, params = read(table, task)
    members = greedy(sets, size, cost_weight)
    return members, [_ordered(params[m]) for m in members]


def _ordered(point: Mapping[str, Any]) -> dict[str, Any]:
    """A start point as the recipes write one: the model first, then the parameters in the recipes' order."""
    order = ("model", "freeze", "lora_rank", "lr", "resolution", "max_length", "epochs", "batch_size",
             "weight_decay", "augment")
    return {k: point[k] for k in sorted(point, key=lambda k: (order.index(k) if k in order else len(order), k))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=TABLE, help="benchmarks/metadata.py's table")
    parser.add_argument("--task", action="append", help="the task(s) [default: every task in the table]")
    parser.add_argument("--size", type=int, default=SIZE, help=f"start points in a portfolio [default: {SIZE}]")
    parser.add_argument("--cost-weight", type=float, default=COST_WEIGHT,
                        help=f"0: regret alone; 1: regret lowered per second [default: {COST_WEIGHT}]")
    parser.add_argument("--write", action="store_true", help="write the portfolios into recipes/<task>.yaml")
    parser.add_argument("--json", type=Path, help="also write the replay as JSON here")
    args = parser.parse_args(argv)
    if not args.table.is_file():
        print(f"Error: {args.table} does not exist; run benchmarks/metadata.py first", file=sys.stderr)
        return 2
    with open(args.table, newline="", encoding="utf-8") as f:
        tasks = args.task or sorted({r["task"] for r in csv.DictReader(f)})
    report = {}
    for task in tasks:
        sets, params = read(args.table, task)
        if len(sets) < 2:
            print(f"{task}: {len(sets)} set(s) in {args.table}; the replay needs two or more")
            continue
        hand = sorted(c for c in params if c.startswith("hand-"))
        seeds = sorted({seed for s in sets.values() for seed in s.seeds})
        print(f"\n{task}: {len(sets)} sets x {len(set().union(*(s.configs() for s in sets.values())))} "
              f"configurations x {len(seeds)} seed(s)")
        loo = leave_one_out(sets, hand, args.size, args.cost_weight)
        agree = {name: rank_agreement(sets[name], FIRST_RUNG.get(task, 1)) for name in loo}
        means = {}
        for measure, title in (("offered", "the best test score the start points offer"),
                               ("regret", "the test score of the one best on validation, as the search picks")):
            print(f"\nregret (test accuracy below the pool's best on the set) of the converged heads and k start "
                  f"points: {title};\nthe portfolio learned without the set vs the hand-typed start points "
                  f"({', '.join(hand)}), and the seconds the first 4 took")
            print(f"{'set':24} " + " ".join(f"{'learned@' + str(k):>10}" for k in REPLAY_AT) + "  " +
                  " ".join(f"{'hand@' + str(k):>8}" for k in REPLAY_AT) + f"  {'s@4 learned/hand':>17}")
            for name, row in sorted(loo.items()):
                print(f"{name:24} " + " ".join(f"{row['learned'][k][measure]:>10.4f}" for k in REPLAY_AT) + "  " +
                      " ".join(f"{row['hand'][k][measure]:>8.4f}" for k in REPLAY_AT) +
                      f"  {row['learned'][4]['seconds']:>8.0f}/{row['hand'][4]['seconds']:<8.0f}")
            means[measure] = {label: {k: round(statistics.mean(r[label][k][measure] for r in loo.values()), 4)
                                      for k in REPLAY_AT} for label in ("learned", "hand")}
            print(f"{'mean':24} " + " ".join(f"{means[measure]['learned'][k]:>10.4f}" for k in REPLAY_AT) + "  " +
                  " ".join(f"{means[measure]['hand'][k]:>8.4f}" for k in REPLAY_AT))
        print(f"\nSpearman's rho per set (median over seeds): validation after {FIRST_RUNG.get(task, 1)} epoch(s) vs "
              "at the best epoch, and validation vs test")
        for name in sorted(agree):
            print(f"{name:24} {_fmt(agree[name]['early_vs_final']):>8} {_fmt(agree[name]['val_vs_test']):>8}")
        rows = {name: {**loo[name], **agree[name]} for name in loo}
        members, points = portfolio_points(task, args.table, args.size, args.cost_weight)
        print(f"portfolio on every set: {', '.join(members) or '(none lowers the regret)'}")
        report[task] = {"sets": rows, "mean": means, "portfolio": members, "hand": hand}
        if args.write and points:
            path = RECIPES / f"{task}.yaml"
            write_recipe(path, start_with_block(task, points, sets, members))
            print(f"wrote {len(points)} start points into {path}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({t: {"mean": r["mean"], "portfolio": r["portfolio"]} for t, r in report.items()}))
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
