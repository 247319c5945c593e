"""Where a trial's wall time goes, and how fast it trains on this machine (CPU, or CUDA when present).

    python benchmarks/throughput.py ../shared/datasets/image/fashion_mnist_100shot --task image-classification
    python benchmarks/throughput.py ../shared/datasets/text/fine_foods --task text-classification --epochs 1

Runs the recipe's first full fine-tune start point (nothing frozen, no LoRA) for ``--epochs`` epochs through
``autotl.training.train`` and prints, from the timings the trial records itself: samples per second
while training, and the shares of the wall time spent in forward/backward/optimizer steps, in
validation, in fetching, transforming and moving batches, and in building the network. The share
outside forward and backward (data + setup) is what the issue asks to keep small.

On a CUDA device it runs the trial three ways, side by side: float32, bfloat16 autocast (the
default there, ``precision: auto``), and bfloat16 with the network and inputs in channels-last
(image backbones that ask for it; autotl's default), and prints their ratios. Nothing else in autotl
needs a GPU. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autotl.plugins import get_registry
from autotl.recipes import load_recipe
from autotl.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-train", type=int, help="train on the first N samples only (a quicker measurement)")
    args = parser.parse_args()

    registry = get_registry()
    task = registry.tasks[args.task]
    recipe = load_recipe(args.task)
    full = [p for p in recipe.start_with if not p.get("freeze") and not p.get("lora_rank")]
    if not full:
        raise SystemExit(f"the {args.task} recipe has no full fine-tune start point (freeze 0, lora_rank 0)")
    params = {**recipe.fixed, **full[0], "epochs": args.epochs}
    family = next(f for f in registry.families_for(task) if f.owns(params["model"]))
    backbone = family.get(params["model"])
    data = task.load(args.data, seed=0, val_fraction=recipe.val_fraction, options=recipe.data)
    prepared = task.prepare(data, backbone, params)
    train_split = prepared.train
    if args.max_train:
        train_split = train_split.take(torch.arange(min(args.max_train, len(train_split))))
    device = torch.device(args.device)
    print(f"{params['model']}: {args.epochs} epochs, train {len(train_split)}, val {len(prepared.val)}, "
          f"device {device}{'' if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}", flush=True)

    variants = {"fp32": {"precision": "fp32"}}
    if device.type == "cuda":
        variants["bf16"] = {"precision": "auto"}
        if backbone.channels_last:
            variants["bf16+channels_last"] = {"precision": "auto"}
            variants["bf16"]["_contiguous"] = True
    rows = {}
    for name, extra in variants.items():
        contiguous = extra.pop("_contiguous", False)
        was = backbone.channels_last
        backbone.channels_last = was and not contiguous
        try:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = train(backbone, {**params, **extra}, train_split, prepared.val, task.target,
                           task.target.width(data.label_names), device=device, seed=0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
        finally:
            backbone.channels_last = was
        timing = result.timing
        outside = timing["data"] + timing["setup"]
        rows[name] = {"wall_s": round(wall, 2), "train_samples_per_s": round(len(train_split) * len(result.curve)
                                                                              / max(timing["step"] + timing["data"], 1e-9), 1),
                      "share": {k: round(v / wall, 4) for k, v in timing.items()},
                      "outside_forward_backward": round(outside / wall, 4), "val_accuracy": round(result.best_value, 4)}
        share = rows[name]["share"]
        print(f"{name:20s} {wall:8.1f} s  {rows[name]['train_samples_per_s']:8.1f} samples/s  "
              f"step {share['step']:.1%}  eval {share['eval']:.1%}  data {share['data']:.1%}  "
              f"setup {share['setup']:.1%}  outside fwd/bwd {rows[name]['outside_forward_backward']:.1%}  "
              f"val {result.best_value:.4f}", flush=True)
    base = rows["fp32"]["train_samples_per_s"]
    for name, row in rows.items():
        row["speedup_vs_fp32"] = round(row["train_samples_per_s"] / base, 2)
    if len(rows) > 1:
        print("throughput vs fp32: " + ", ".join(f"{n} {r['speedup_vs_fp32']:.2f}x" for n, r in rows.items()))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"model": params["model"], "device": device_name, "epochs": args.epochs,
                      "train_size": len(train_split), "rows": rows}))


if __name__ == "__main__":
    main()
