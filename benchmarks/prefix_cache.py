"""The frozen-prefix cache, measured: one trial through the whole network, then on cached prefix outputs.

Runs the same trial (same model, freeze depth, parameters and seed) three times in one process:

1. uncached: every epoch runs the whole network (``autotl search --no-cache``);
2. cold: the prefix outputs are computed once (into an empty cache folder), then the rest trains;
3. warm: a later trial with the same model, freeze depth and inputs: the outputs come from the cache.

and prints the wall time of each, the ratios uncached / cold and uncached / warm, and the best
validation accuracy of each (the same network trains on the same inputs: they agree to float
rounding). The default is a linear probe (every group but the head frozen) of the recipe's first
start point's model::

    python benchmarks/prefix_cache.py ../shared/datasets/image/fashion_mnist_100shot --task image-classification
    python benchmarks/prefix_cache.py ../shared/datasets/text/fine_foods --task text-classification --epochs 5
    python benchmarks/prefix_cache.py DATA --task image-classification --freeze 4 --lr 3e-3
    python benchmarks/prefix_cache.py ../shared/datasets/text/fine_foods --task text-classification --freeze 4 --epochs 2 --lr 3e-4 --set max_length=256

Every other trial parameter (resolution, max length, batch size...) is the recipe's first start
point's, or what ``--set KEY=VALUE`` says.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from autotl.cache import FeatureCache
from autotl.cli import parse_key_values
from autotl.errors import UsageError
from autotl.plugins import get_registry
from autotl.recipes import load_recipe
from autotl.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", help="default: the model of the recipe's first start point")
    parser.add_argument("--freeze", type=int, help="default: every group but the head (a linear probe)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another trial parameter, e.g. max_length=256 (repeatable; the value is read as YAML)")
    args = parser.parse_args()
    try:
        settings = parse_key_values(args.set, "--set", "--set max_length=256")
    except UsageError as error:
        parser.error(str(error))

    registry = get_registry()
    task = registry.tasks[args.task]
    recipe = load_recipe(args.task)
    start = dict(recipe.start_with[0]) if recipe.start_with else {}
    name = args.model or start.get("model")
    family = next(f for f in registry.families_for(task) if f.owns(name))
    backbone = family.get(name)
    groups = len(backbone.layer_groups(backbone.build(2, pretrained=False)))
    freeze = groups - 1 if args.freeze is None else args.freeze
    params = {**recipe.fixed, **start, "model": name, "freeze": freeze, "lora_rank": 0, "lr": args.lr,
              "epochs": args.epochs, "augment": "none", **settings}
    data = task.load(args.data, seed=args.seed, val_fraction=recipe.val_fraction, options=recipe.data)
    prepared = task.prepare(data, backbone, params)
    context = {"task": task.name, "fingerprint": data.fingerprint}
    device = torch.device("cpu")
    print(f"{name}: freeze {freeze} of {groups} groups, {args.epochs} epochs, train {len(prepared.train)}, "
          f"val {len(prepared.val)}, {torch.get_num_threads()} threads", flush=True)

    def run(cache: FeatureCache | None) -> tuple[float, float, dict, dict]:
        started = time.perf_counter()
        result = train(backbone, params, prepared.train, prepared.val, task.target,
                       task.target.width(data.label_names), device=device, seed=args.seed, cache=cache,
                       cache_context=context)
        return time.perf_counter() - started, result.best_value, result.timing, result.cache

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(directory=folder)
        for label, use in (("uncached", None), ("cold", cache), ("warm", FeatureCache(directory=folder))):
            seconds, best, timing, served = run(use)
            rows[label] = {"seconds": round(seconds, 2), "val_accuracy": round(best, 4), "timing": timing,
                           "cache": served}
            print(f"{label:9s} {seconds:8.2f} s  val acc {best:.4f}  cache {served or '-'}  timing {timing}",
                  flush=True)
    if "skipped" in rows["cold"]["cache"] or not rows["cold"]["cache"]:
        raise SystemExit(f"the trial was not cached: {rows['cold']['cache']}")
    ratio_cold = rows["uncached"]["seconds"] / rows["cold"]["seconds"]
    ratio_warm = rows["uncached"]["seconds"] / rows["warm"]["seconds"]
    print(f"speed-up: {ratio_cold:.1f}x with the prefix computed in the trial, {ratio_warm:.1f}x from the cache")
    print(json.dumps({"model": name, "freeze": freeze, "groups": groups, "epochs": args.epochs,
                      "uncached_s": rows["uncached"]["seconds"], "cold_s": rows["cold"]["seconds"],
                      "warm_s": rows["warm"]["seconds"], "speedup_cold": round(ratio_cold, 2),
                      "speedup_warm": round(ratio_warm, 2),
                      "val_accuracy": {k: v["val_accuracy"] for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
