"""Images read once: decode, check, fingerprint, split, and resize per resolution; an ImageFolder's reader.

:class:`ImageData` is what every image task loads (the classes of an ImageFolder, the numbers or label
sets of a CSV listing image files: :mod:`._table`); :func:`pixels` is the one path from a decoded image
to the model's pixels, for the search and for ``autotl predict``.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from autotl import DataReport, SkippedItem
from autotl.errors import DataError
from autotl.utils import stratified_split

SPLITS = ("train", "val", "test")
#: the raster formats decoded, by Pillow's names: no file reaches a decoder that runs an external
#: program (EPS through Ghostscript) or one that is not a picture (PSD layers, FITS, MPEG...). JPEG
#: includes the multi-picture JPEGs of phone cameras (MPO).
RASTER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO", "JPEG2000", "QOI")
#: a file larger than this is skipped unread: no image under Pillow's decompression-bomb limit
#: (about 89 million pixels) takes 1 GiB even uncompressed, at 16 bits per channel with alpha.
MAX_IMAGE_BYTES = 1 << 30
_FORMAT_NAMES = "PNG, JPEG, GIF, BMP, TIFF, WebP, PPM, TGA, ICO, JPEG 2000, QOI"
_ORIENTATION = 0x0112  # the EXIF tag
#: how an image becomes a square of the input's side: ``crop`` scales the shorter side to it and keeps the
#: centre; ``pad`` scales the longer side to it and pads the rest with black (nothing is lost, for labels
#: anywhere in the image); ``stretch`` scales each side to it (the aspect ratio changes).
FIT_MODES = ("crop", "pad", "stretch")
_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass
class ImageData:
    """Decoded images of every split, as PIL images in RGB, with their labels.

    A label is what the task's target reads, one per image: a class index (an ImageFolder), a number,
    a row of 0/1 per label name (a label set); :meth:`labels` stacks them as ``label_dtype``.
    """

    root: Path
    classes: list[str]  # the label names, in the order of the model's outputs
    splits: dict[str, tuple[list[Image.Image], list, list[str]]]  # images, labels, paths relative to root
    fingerprint: str
    skipped: list[SkippedItem]
    val_from_train: bool
    max_side: int = 512
    label_dtype: torch.dtype = torch.long
    fit: str = "crop"  # how images become squares (FIT_MODES)
    _resized: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.splits[split][1], dtype=self.label_dtype)

    def report(self) -> DataReport:
        counts = {
            split: {c: self.splits[split][1].count(i) for i, c in enumerate(self.classes)}
            for split in SPLITS if split in self.splits
        }
        return DataReport(classes=self.classes, counts=counts, val_from_train=self.val_from_train,
                          skipped=self.skipped, root=str(self.root))


def load_image_folder(root: Path, *, seed: int, val_fraction: float, max_side: int = 512) -> ImageData:
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; give a folder with train/<class>/ image folders")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; lay the images out as {root}/train/<class>/<image>")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in classes:
        if not is_utf8(name):
            raise DataError(f"{train_dir} has a class folder whose name is not UTF-8 ({shown(name)}); rename it "
                            "(class names become the model's labels)")
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"{train_dir} has {found}; classification needs at least two class folders")

    digest = hashlib.sha256()
    skipped: list[SkippedItem] = []
    splits: dict[str, tuple[list, list, list]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        if split != "train":
            extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes
                           and not p.name.startswith("."))
            if extra:
                raise DataError(f"{split_dir} has class folders that train/ lacks: {', '.join(map(shown, extra))}; "
                                "add them to train/ or remove them")
        images, labels, paths = [], [], []
        for label, cls in enumerate(classes):
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue
            decoded = 0
            for file in image_files(cls_dir):
                rel = str(file.relative_to(root))
                image, problem = _decode(file, max_side)
                if image is None:
                    skipped.append(SkippedItem(shown(rel), problem))
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


def image_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, but those in hidden files or folders (a name starting with a dot).

    The one rule of the search (each class folder) and of ``autotl predict`` (each folder given):
    ``train/cat/.picasaoriginals/x.jpg`` is neither trained on nor predicted.
    """
    return sorted(p for p in folder.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts) and not p.is_dir())


def is_utf8(name: str) -> bool:
    """Whether a file name (as :func:`os.fsdecode` gives it) is UTF-8 text: no undecodable bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str | Path) -> str:
    """A file name fit to print and to write as JSON: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def _decode(file: Path, max_side: int) -> tuple[Image.Image | None, str]:
    """Decode one image to upright RGB (grey, RGBA and palette images included); ``(None, why)`` if it cannot be.

    The one decoding of the search and of ``autotl predict``: only :data:`RASTER_FORMATS`, files
    whose name is UTF-8 and no larger than :data:`MAX_IMAGE_BYTES`, read from the file as Pillow
    needs (never read whole first).
    """
    if not is_utf8(str(file)):
        return None, "its name is not UTF-8; rename it"
    try:
        size = file.stat().st_size
    except OSError as exc:  # a dangling link, a symlink loop
        return None, f"cannot be read ({exc.strerror or exc.__class__.__name__})"
    if size == 0:
        return None, "empty file"
    if size > MAX_IMAGE_BYTES:
        return None, (f"{size / (1 << 30):.1f} GiB, larger than any image autotl decodes (at most "
                      f"{MAX_IMAGE_BYTES >> 30} GiB); not read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=RASTER_FORMATS) as image:
                image.draft("RGB", (max_side, max_side))
                image.load()
                return to_rgb(image, max_side), ""
    except OSError as exc:
        if isinstance(exc, Image.UnidentifiedImageError):
            return None, f"not a readable image (not in an image format autotl decodes: {_FORMAT_NAMES})"
        if exc.errno is not None:  # a special file, no permission: not the image's fault
            return None, f"cannot be read ({exc.strerror or exc.__class__.__name__})"
        return None, f"not a readable image, truncated or corrupt ({exc.__class__.__name__}: {str(exc)[:120]})"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        return None, (f"too many pixels ({count}, over Pillow's decompression-bomb limit of "
                      f"{Image.MAX_IMAGE_PIXELS:,}); shrink the image")
    except Exception as exc:  # PIL raises many types for broken files: report, never crash
        return None, f"not a readable image, truncated or corrupt ({exc.__class__.__name__}: {str(exc)[:120]})"


def to_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """A decoded image as 8-bit RGB, upright (its EXIF orientation applied), at most ``max_side`` pixels on its
    longer side."""
    if image.getexif().get(_ORIENTATION, 1) != 1:  # a phone photo taken sideways: turn it upright
        image = ImageOps.exif_transpose(image)
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
    """Hold out ``val_fraction`` of each class (at least one image, never the last one), seeded
    (:func:`autotl.utils.stratified_split`)."""
    images, labels, paths = train

    def too_few(label: int, members: list[int]) -> str:
        return (f"class {classes[label]!r} in {train_dir} has {len(members)} readable image(s); a validation "
                "split needs at least 2 per class: add images or give a val/ folder")

    train_idx, val_idx = stratified_split(labels, len(classes), val_fraction, seed, too_few=too_few)

    def take(idx):
        return [images[i] for i in idx], [labels[i] for i in idx], [paths[i] for i in idx]

    return take(train_idx), take(val_idx)


def resize_all(data: ImageData, split: str, size: int, interpolation: str = "bilinear",
               fit: str = "crop") -> torch.Tensor:
    """All images of ``split`` as one uint8 tensor ``(N, 3, size, size)`` (:func:`pixels`), computed once per size."""
    key = (split, size, interpolation, fit)
    if key not in data._resized:
        data._resized[key] = pixels(data.splits[split][0], size, interpolation, fit)
    return data._resized[key]


def pixels(images: list[Image.Image], size: int, interpolation: str = "bilinear", fit: str = "crop") -> torch.Tensor:
    """RGB images as one uint8 tensor ``(N, 3, size, size)``, made square as ``fit`` says (:data:`FIT_MODES`):
    by default the shorter side to ``size`` and a centre crop.

    The one path from a decoded image to the model's pixels, for the search and for ``autotl predict``.
    """
    method = _INTERPOLATION.get(interpolation, Image.BILINEAR)
    square = {"pad": _resize_pad, "stretch": _resize_stretch}.get(fit, _resize_crop)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i] = torch.from_numpy(np.array(square(image, size, method))).permute(2, 0, 1)
    return out


def _resize_pad(image: Image.Image, size: int, method) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image.resize((nw, nh), method), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _resize_stretch(image: Image.Image, size: int, method) -> Image.Image:
    return image.resize((size, size), method)


def _resize_crop(image: Image.Image, size: int, method) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), method)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def hold_out(data: ImageData, val_idx: Sequence[int]) -> None:
    """Make the training images at positions ``val_idx`` the validation split (``val_from_train``); the rest train."""
    images, labels, paths = data.splits["train"]
    chosen = set(int(i) for i in val_idx)
    keep = [i for i in range(len(images)) if i not in chosen]
    pick = sorted(chosen)
    data.splits["train"] = ([images[i] for i in keep], [labels[i] for i in keep], [paths[i] for i in keep])
    data.splits["val"] = ([images[i] for i in pick], [labels[i] for i in pick], [paths[i] for i in pick])
    data.val_from_train = True
    data._resized.clear()
