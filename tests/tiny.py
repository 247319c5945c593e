"""A tiny timm network (a few thousand parameters) and tiny image folders, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
from PIL import Image
from timm.models import build_model_with_cfg, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

TINY = "autotl_tiny_effnet"


def _tiny(pretrained: bool = False, **kwargs):
    arch = [["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e2_c12"], ["ir_r1_k3_s2_e2_c16"]]
    return build_model_with_cfg(EfficientNet, TINY, pretrained, block_args=decode_arch_def(arch),
                                num_features=32, stem_size=8, **kwargs)


if not timm.is_model(TINY):
    _tiny.__name__ = TINY
    register_model(_tiny)


def save_tiny_weights(path: Path, seed: int = 0) -> Path:
    """A checkpoint of the tiny network, as a user's local weights file."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(TINY, num_classes=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), str(path))
    return path


def make_image_folder(root: Path, classes=("dark", "light", "striped"), per_class: int = 12,
                      splits=("train", "test"), size: int = 24, seed: int = 0) -> Path:
    """Tiny ImageFolder of easy synthetic classes: dark, light and striped images."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.integers(0, 40, (size, size), dtype=np.int64)
                if label == 0:
                    pixels = 20 + noise
                elif label == 1:
                    pixels = 200 + noise // 2
                else:
                    pixels = np.where((np.arange(size) // 3) % 2 == 0, 230, 20)[None, :] + 0 * noise
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L")
                if label == 1:
                    image = image.convert("RGBA")  # other modes must work too
                image.save(folder / f"{split}_{i:03d}.png")
    return root


def accuracy(model, split, device) -> float:
    """The share of ``split`` whose top output is its label (``nan`` for an empty split): what the search scores
    a single-label task's trials with, computed here independently of its target."""
    import torch

    from autotl.inference import predict_outputs

    outputs = predict_outputs(model, split, device)
    return float((outputs.argmax(-1) == split.labels).float().mean()) if len(split) else float("nan")
