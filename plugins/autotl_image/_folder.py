"""Reading an ImageFolder once: decode, check, fingerprint, split, and resize per resolution."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autotl.errors import DataError

SPLITS = ("train", "val", "test")
_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass
class ImageData:
    """Decoded images of every split, as PIL images in RGB, with integer labels."""

    root: Path
    classes: list[str]
    splits: dict[str, tuple[list[Image.Image], list[int], list[str]]]  # images, labels, relative paths
    fingerprint: str
    skipped: list[dict[str, str]]
    val_from_train: bool
    max_side: int = 512
    _resized: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.splits[split][1], dtype=torch.long)

    def report(self) -> dict:
        counts = {
            split: {c: self.splits[split][1].count(i) for i, c in enumerate(self.classes)}
            for split in SPLITS if split in self.splits
        }
        return {
            "root": str(self.root),
            "classes": self.classes,
            "counts": counts,
            "val_from_train": self.val_from_train,
            "skipped": self.skipped,
        }


def load_image_folder(root: Path, *, seed: int, val_fraction: float, max_side: int = 512) -> ImageData:
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; give a folder with train/<class>/ image folders")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; lay the images out as {root}/train/<class>/<image>")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"{train_dir} has {found}; classification needs at least two class folders")

    digest = hashlib.sha256()
    skipped: list[dict[str, str]] = []
    splits: dict[str, tuple[list, list, list]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        if split != "train":
            extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes
                           and not p.name.startswith("."))
            if extra:
                raise DataError(f"{split_dir} has class folders that train/ lacks: {', '.join(extra)}; "
                                "add them to train/ or remove them")
        images, labels, paths = [], [], []
        for label, cls in enumerate(classes):
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue
            decoded = 0
            for file in sorted(p for p in cls_dir.rglob("*") if not p.name.startswith(".")):
                if file.is_dir():
                    continue
                rel = str(file.relative_to(root))
                image, problem = _decode(file, max_side)
                if image is None:
                    skipped.append({"file": rel, "reason": problem})
                    continue
                digest.update(f"{split}\0{cls}\0{rel}\0".encode())
                digest.update(image.tobytes())
                images.append(image)
                labels.append(label)
                paths.append(rel)
                decoded += 1
            if split == "train" and decoded == 0:
                raise DataError(f"class folder {cls_dir} holds no readable image; add images or remove the folder")
        splits[split] = (images, labels, paths)

    val_from_train = "val" not in splits or not splits["val"][0]
    if val_from_train:
        splits["train"], splits["val"] = _stratified_split(splits["train"], classes, val_fraction, seed, train_dir)
    return ImageData(root, classes, splits, digest.hexdigest()[:16], skipped, val_from_train, max_side)


def _decode(file: Path, max_side: int) -> tuple[Image.Image | None, str]:
    """Decode one image to RGB (grey, RGBA and palette images included); ``(None, why)`` if it cannot be."""
    try:
        if file.stat().st_size == 0:
            return None, "empty file"
        data = file.read_bytes()
    except OSError as exc:  # a dangling link, a symlink loop, a special file
        return None, f"cannot be read ({exc.strerror or exc.__class__.__name__})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (max_side, max_side))
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        return None, (f"too many pixels ({count}, over Pillow's decompression-bomb limit of "
                      f"{Image.MAX_IMAGE_PIXELS:,}); shrink the image")
    except Image.UnidentifiedImageError:
        return None, "not a readable image (not in an image format Pillow knows)"
    except Exception as exc:  # PIL raises many types for broken files: report, never crash
        return None, f"not a readable image, truncated or corrupt ({exc.__class__.__name__}: {str(exc)[:120]})"
    return to_rgb(image, max_side), ""


def to_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """A decoded image as 8-bit RGB, at most ``max_side`` pixels on its longer side."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scale, don't clip, to 8 bits
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.BICUBIC)
    return image


def _stratified_split(train, classes, val_fraction, seed, train_dir):
    """Hold out ``val_fraction`` of each class (at least one image, never the last one), seeded."""
    images, labels, paths = train
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for label, cls in enumerate(classes):
        members = np.flatnonzero(labels_arr == label)
        if len(members) < 2:
            raise DataError(f"class {cls!r} in {train_dir} has {len(members)} readable image(s); a validation "
                            "split needs at least 2 per class: add images or give a val/ folder")
        n_val = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        val_idx.extend(rng.permutation(members)[:n_val].tolist())
    val_set = set(val_idx)
    train_idx = [i for i in range(len(labels)) if i not in val_set]

    def take(idx):
        idx = sorted(idx)
        return [images[i] for i in idx], [labels[i] for i in idx], [paths[i] for i in idx]

    return take(train_idx), take(val_idx)


def resize_all(data: ImageData, split: str, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """All images of ``split`` as one uint8 tensor ``(N, 3, size, size)``, computed once per size.

    Each image is resized so its shorter side is ``size`` and centre-cropped to a square.
    """
    key = (split, size, interpolation)
    if key not in data._resized:
        data._resized[key] = pixels(data.splits[split][0], size, interpolation)
    return data._resized[key]


def pixels(images: list[Image.Image], size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """RGB images as one uint8 tensor ``(N, 3, size, size)``: shorter side to ``size``, centre crop.

    The one path from a decoded image to the model's pixels, for the search and for ``autotl predict``.
    """
    method = _INTERPOLATION.get(interpolation, Image.BILINEAR)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i] = torch.from_numpy(np.array(_resize_crop(image, size, method))).permute(2, 0, 1)
    return out


def _resize_crop(image: Image.Image, size: int, method) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), method)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))
