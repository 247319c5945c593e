"""autotl's image tasks: what they share (:class:`ImageTask`), and image classification on an ImageFolder.

:class:`ImageTask` decodes every image once when the data is loaded and resizes it once per
resolution (epochs and later trials reuse the tensors), normalises it for the backbone, records the
settings a bundle needs, and reads what ``autotl predict`` is given: image files, folders, CSV files
listing images. A task of images subclasses it with a :meth:`~ImageTask.load` and a target:
:class:`ImageClassification` here (``DATA/train/<class>/<image>``, optional ``val/`` and ``test/``);
``autotl_tasks.image_tasks`` the tasks whose labels come in CSV files (:func:`load_image_csv`).

For bundles the same functions decode (:func:`_folder._decode`), make square (:func:`pixels`) and
normalise (:func:`_transform`) the images to predict, driven by :meth:`ImageTask.export_settings`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import torch
from PIL import Image

from autotl import (Backbone, DataReport, FittedRange, ImagePreprocessing, LoadedData, Param, Task, TensorSplit,
                    TrialData, hookimpl)
from autotl_tasks.fitting import epochs_by_samples, median, percentile
from autotl_tasks.targets import ClassLabel
from autotl.errors import DataError, UnreadableInputs, UsageError

from ._folder import (FIT_MODES, RASTER_FORMATS, ImageData, _decode, hold_out, image_files, load_image_folder, pixels,
                      resize_all, shown, to_rgb)
from ._table import ImageRow, load_image_csv, parse_label_set, parse_number, read_image_csv

DEFAULT_MAX_SIDE = 512
#: the smallest ``max_side``: an image kept smaller than this is no longer a picture of anything.
MIN_MAX_SIDE = 16


class ImageTask(Task):
    """What every task on images shares: decoding and caching, the backbone's transforms, export and prediction.

    A subclass gives :attr:`name`, :attr:`target`, its :attr:`data_options` (these and its own) and
    :meth:`load`, which returns a :class:`LoadedData` whose ``payload`` is an :class:`ImageData`
    holding, per image, the label its target reads (:meth:`ImageData.labels`).
    """

    modality = "image"
    #: how images are made square unless the data option ``fit`` says otherwise (:data:`FIT_MODES`).
    default_fit = "crop"
    data_options = {
        "max_side": f"longest side images are kept at when decoded (default {DEFAULT_MAX_SIDE})",
        "fit": "how an image becomes the square input: crop (shorter side to the resolution, centre kept), pad "
               "(longer side, black borders) or stretch",
    }
    parameters = (
        Param("resolution", "int", "pixels of the square input (default: the model's native size)", low=MIN_MAX_SIDE),
        Param("augment", "categorical", "random training flips (flip), plus shifts of up to 1/8 of the side "
              "(flip+shift), shifts only (shift: for targets a mirror image changes), or none (lets the frozen-prefix "
              "cache serve the trial)", default="flip", choices=("none", "flip", "flip+shift", "shift")),
    )

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        images: ImageData = data.payload
        settings = _settings(images.max_side, images.fit, backbone, params)
        augment = str(params.get("augment", "flip"))
        transform = _transform(settings, augment)

        def split(name: str) -> TensorSplit:
            resized = resize_all(images, name, settings["resolution"], settings["interpolation"], images.fit)
            return TensorSplit(resized, images.labels(name), transform, random_augmentation=augment != "none")

        return TrialData(
            train=split("train"),
            val=split("val"),
            test=split("test") if "test" in images.splits else None,
        )

    def split_items(self, data: LoadedData, split: str) -> tuple[list[Any], list[Any]] | None:
        """The image files of ``split`` (paths under the data folder) and their labels (as :class:`ImageData` holds them)."""
        images: ImageData = data.payload
        if split not in images.splits:
            return None
        _, labels, paths = images.splits[split]
        return [images.root / p for p in paths], list(labels)

    def _fit(self, value: Any) -> str:
        fit = self.default_fit if value in (None, "") else str(value)
        if fit not in FIT_MODES:
            raise UsageError(f"data option fit must be one of {', '.join(FIT_MODES)}, not {value!r}; e.g. -d fit=pad")
        return fit

    def load_table(self, path: Path, options: Mapping[str, Any], column: str, parse) -> ImageData:
        """The images listed in ``path``'s ``train.csv``, ``val.csv`` and ``test.csv`` with ``parse(row)`` of each
        row as its label (:func:`load_image_csv`); the data options ``image_column`` and ``max_side`` applied."""
        image_column = str((options or {}).get("image_column") or "image")
        return load_image_csv(Path(path), image_column=image_column, column=column, parse=parse,
                              max_side=_max_side(options))

    def loaded(self, images: ImageData, options: Mapping[str, Any], report: Any) -> LoadedData:
        """What a subclass's :meth:`load` returns for ``images``: the data option ``fit`` checked and kept, the
        training images' sides added to the report (``image_side``, what :meth:`fitted_space` reads)."""
        images.fit = self._fit((options or {}).get("fit"))
        report = DataReport.of(report, list(images.classes))
        report.details.setdefault("image_side", image_sides(images))
        return LoadedData(label_names=list(images.classes), fingerprint=images.fingerprint, report=report,
                          has_test="test" in images.splits, payload=images)

    def fitted_space(self, data: LoadedData, backbones: Mapping[str, Backbone],
                     asked: Mapping[str, Any]) -> list[FittedRange]:
        """``resolution`` from the training images' median shorter side (:func:`fitted_resolutions`), ``epochs``
        from their number (:func:`autotl_tasks.fitting.epochs_by_samples`)."""
        fitted = []
        sides = data.report.details.get("image_side") or {}
        if "resolution" in asked and sides.get("median"):
            natives = [ImagePreprocessing.of(b).input_size for b in backbones.values()]
            fitted.append(fitted_resolutions(int(sides["median"]), max(natives, default=None)))
        if "epochs" in asked:
            fitted.extend(epochs_by_samples(len(data.payload.splits["train"][0]), asked["epochs"]))
        return fitted

    # -- export and prediction --------------------------------------------------------------------
    def export_settings(self, data_options: Mapping[str, Any], backbone: Backbone,
                        params: Mapping[str, Any]) -> dict[str, Any]:
        settings = _settings(_max_side(data_options), self._fit((data_options or {}).get("fit")), backbone, params)
        if "image_column" in (self.data_options or {}):  # a task reading CSV files: the column predict reads
            settings["image_column"] = str((data_options or {}).get("image_column") or "image")
        return settings

    def read_inputs(self, sources: Sequence[str], *, stdin: TextIO | None = None) -> list[tuple[str, Any]]:
        """Image files, folders (every image file under them, sorted) and CSV files listing images (each row,
        named ``FILE:LINE``; the image column is the bundle's); ``-`` reads paths from stdin."""
        items: list[tuple[str, Any]] = []
        for source in sources or ["-"]:
            if source == "-":
                stream = stdin if stdin is not None else sys.stdin
                paths = [line.strip() for line in stream if line.strip()]
                if not paths:
                    raise DataError("no image paths on standard input; give image files or folders")
                items.extend(self.read_inputs(paths))
                continue
            path = Path(source)
            if path.is_dir():
                found = [p for p in image_files(path) if _is_image_name(p)]
                if not found:
                    raise DataError(f"{shown(path)} holds no image file ({', '.join(_SHOWN_EXTENSIONS)}...)")
                items.extend((shown(p), p) for p in found)
            elif path.is_file() and path.suffix.lower() == ".csv":
                items.extend((row.where, row) for row in read_image_csv(path))
            elif path.is_file():
                items.append((shown(path), path))
            else:
                raise DataError(f"no such image file or folder: {shown(path)}")
        return items

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone,
                               settings: Mapping[str, Any]) -> TensorSplit:
        """Items are image file paths (decoded exactly as the search decodes), PIL images, or rows of a CSV
        listing images (:class:`ImageRow`, their file in the bundle's image column).

        Files that cannot be decoded raise one :class:`~autotl.errors.UnreadableInputs` listing them all.
        """
        max_side = int(settings.get("max_side", DEFAULT_MAX_SIDE))
        column = str(settings.get("image_column", "image"))
        images = []
        problems: list[tuple[int, str]] = []
        for index, item in enumerate(raw):
            if isinstance(item, Image.Image):
                images.append(to_rgb(item, max_side))
                continue
            if isinstance(item, ImageRow):
                item = item.image(column)
            if not isinstance(item, (str, Path)):
                raise DataError(f"cannot predict on a {type(item).__name__}: give image file paths or PIL images")
            path = Path(item)
            if path.is_dir():
                raise DataError(f"{path} is a folder: give image files (`autotl predict` and "
                                "Bundle.predict_files expand folders)")
            if not path.exists() and not path.is_symlink():
                raise DataError(f"no such image file: {shown(path)}")
            image, problem = _decode(path, max_side)
            if image is None:
                problems.append((index, problem))
                continue
            images.append(image)
        if problems:
            index, problem = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            name = raw[index].where if isinstance(raw[index], ImageRow) else shown(raw[index])
            raise UnreadableInputs(f"cannot predict on {name}: {problem}{more}", problems)
        resized = pixels(images, int(settings["resolution"]), str(settings["interpolation"]),
                         str(settings.get("fit", "crop")))
        return TensorSplit(resized, torch.zeros(len(images), dtype=torch.long), _transform(settings, "none"))


class ImageClassification(ImageTask):
    name = "image-classification"
    target = ClassLabel()
    description = "ImageFolder of labelled images: DATA/train/<class>/*, optional val/ and test/"

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        images = load_image_folder(Path(path), seed=seed, val_fraction=val_fraction,
                                   max_side=_max_side(options))
        return self.loaded(images, options, images.report())


#: the resolutions a fitted space takes from (:func:`fitted_resolutions`): 96 keeps a trial cheap on a CPU, 224 is
#: the ImageNet models' native size.
RESOLUTIONS = (96, 128, 160, 224)


def image_sides(images: ImageData) -> dict[str, int]:
    """The shorter sides of the training images as decoded (at most ``max_side`` on the longer side): their
    median, 10th and 90th percentiles, smallest and largest, in pixels."""
    sides = sorted(min(image.size) for image in images.splits["train"][0])
    if not sides:
        return {}
    return {"median": int(median(sides)), "p10": percentile(sides, 0.1), "p90": percentile(sides, 0.9),
            "min": sides[0], "max": sides[-1]}


def fitted_resolutions(side: int, native: int | None) -> FittedRange:
    """The resolutions to search for images whose median shorter side is ``side`` pixels: the steps of
    :data:`RESOLUTIONS` up to the first at or above ``side`` (an image is upscaled by at most one step), at least the
    two lowest (thumbnails, upscaled as pretrained networks see them best); none above the models' largest native
    input size ``native``, which is offered itself where the images reach it."""
    top = next((r for r in RESOLUTIONS if r >= side), RESOLUTIONS[-1])
    choices = [r for r in RESOLUTIONS if r <= max(top, RESOLUTIONS[1])]
    why = f"median image side {side} px"
    if native is not None and native < choices[-1]:
        choices = sorted({*(r for r in choices if r < native), native})
        why += f"; the models' native size {native} px"
    return FittedRange("resolution", why, choices=choices)


def _max_side(options: Mapping[str, Any]) -> int:
    """The ``max_side`` data option: a whole number of pixels, at least :data:`MIN_MAX_SIDE`."""
    value = (options or {}).get("max_side", DEFAULT_MAX_SIDE)
    try:
        number = int(float(value)) if not isinstance(value, bool) and float(value).is_integer() else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < MIN_MAX_SIDE:
        raise UsageError(f"data option max_side must be a whole number of pixels, at least {MIN_MAX_SIDE}, not "
                         f"{value!r}; e.g. -d max_side={DEFAULT_MAX_SIDE} (or `data: {{max_side: "
                         f"{DEFAULT_MAX_SIDE}}}` in the recipe)")
    return number


def _settings(max_side: int, fit: str, backbone: Backbone, params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that turns an image file into the model's input, as JSON values."""
    pre = ImagePreprocessing.of(backbone)
    # the default fit (crop) is recorded as bundles recorded it before fit existed: their JSON is unchanged
    resize = {"resize": "longer side at most max_side when decoded; then shorter side to resolution, centre crop"} \
        if fit == "crop" else {"resize": "longer side at most max_side when decoded; then made square as fit says: "
                               "pad (longer side to resolution, black borders) or stretch", "fit": fit}
    return {
        "max_side": int(max_side),
        "colour": "RGB: grey and palette converted, alpha composited on white, 16-bit grey scaled to 8 bits",
        **resize,
        "resolution": int(params.get("resolution") or pre.input_size),
        "interpolation": pre.interpolation,
        "scale": "pixels / 255, then (x - mean) / std per channel",
        "mean": list(pre.mean),
        "std": list(pre.std),
    }


def _transform(settings: Mapping[str, Any], augment: str):
    mean = torch.tensor(settings["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(settings["std"], dtype=torch.float32).view(1, 3, 1, 1)

    def transform(batch: torch.Tensor, train: bool) -> torch.Tensor:
        x = batch.float().div_(255.0)
        if train:
            x = _augment(x, augment)
        return (x - mean) / std

    return transform


_SHOWN_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".gif")


def _is_image_name(path: Path) -> bool:
    """Whether the file's extension is one of a format the search decodes (:data:`_folder.RASTER_FORMATS`;
    ``.mpo``, a phone camera's multi-picture JPEG, opens as JPEG)."""
    return Image.registered_extensions().get(path.suffix.lower()) in (*RASTER_FORMATS, "MPO")


def _augment(x: torch.Tensor, how: str) -> torch.Tensor:
    """Random horizontal flips (``flip``), plus random shifts of up to 1/8 of the side (``flip+shift``), or
    the shifts alone (``shift``)."""
    if how == "none":
        return x
    if "flip" in how:
        flip = torch.rand(x.shape[0]) < 0.5
        x[flip] = x[flip].flip(-1)
    if "shift" in how:
        n, _, h, w = x.shape
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
        rows = (torch.arange(h) + dy[:, None])[:, None, :, None]  # one gather, no Python loop per image
        cols = (torch.arange(w) + dx[:, None])[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    return x


@hookimpl
def register_tasks(register):
    register(ImageClassification())


__all__ = ["FIT_MODES", "RESOLUTIONS", "ImageClassification", "ImageData", "ImageRow", "ImageTask", "fitted_resolutions",
           "hold_out", "image_sides", "load_image_csv", "parse_label_set", "parse_number", "read_image_csv",
           "register_tasks"]
