"""autotl task plugin: image classification on an ImageFolder.

Layout: ``DATA/train/<class>/<image>``, optional ``DATA/val/<class>/...`` and ``DATA/test/<class>/...``.
Every image is decoded once when the data is loaded, and resized once per resolution; epochs
and later trials reuse the resized tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from autotl import Backbone, LoadedData, Task, TensorSplit, TrialData, hookimpl

from ._folder import ImageData, load_image_folder, resize_all


@hookimpl
def register_tasks(register):
    register(ImageClassification())


class ImageClassification(Task):
    name = "image-classification"
    modality = "image"
    description = "ImageFolder of labelled images: DATA/train/<class>/*, optional val/ and test/"

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        images = load_image_folder(Path(path), seed=seed, val_fraction=val_fraction,
                                   max_side=int(options.get("max_side", 512)))
        return LoadedData(
            label_names=images.classes,
            fingerprint=images.fingerprint,
            report=images.report(),
            has_test="test" in images.splits,
            payload=images,
        )

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        images: ImageData = data.payload
        pre = backbone.preprocessing()
        size = int(params.get("resolution") or pre.get("input_size", 224))
        mean = torch.tensor(pre.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
        augment = str(params.get("augment", "flip"))

        def transform(batch: torch.Tensor, train: bool) -> torch.Tensor:
            x = batch.float().div_(255.0)
            if train:
                x = _augment(x, augment)
            return (x - mean) / std

        def split(name: str) -> TensorSplit:
            pixels = resize_all(images, name, size, pre.get("interpolation", "bilinear"))
            return TensorSplit(pixels, images.labels(name), transform)

        return TrialData(
            train=split("train"),
            val=split("val"),
            test=split("test") if "test" in images.splits else None,
        )


def _augment(x: torch.Tensor, how: str) -> torch.Tensor:
    """Random horizontal flips (``flip``), plus random shifts of up to 1/8 of the side (``flip+shift``)."""
    if how == "none":
        return x
    flip = torch.rand(x.shape[0]) < 0.5
    x[flip] = x[flip].flip(-1)
    if how == "flip+shift":
        n, _, h, w = x.shape
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n)).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return x


__all__ = ["ImageClassification", "register_tasks"]
