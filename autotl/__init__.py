"""autotl: automated transfer learning."""

from .base import (Backbone, BackboneFamily, ExportUnsupportedError, LoadedData, Registry, Task, TensorSplit,
                   TrialData)
from .contracts import DataReport, ImagePreprocessing, Preprocessing, SkippedItem, TextPreprocessing
from .errors import AutotlError
from .hookspecs import hookimpl
from .utils import is_under, json_lines, load_without_head, numbered_records, stratified_split
from .params import Param

__version__ = "0.1.0"


def load(path, *, device="auto", engine="torch"):
    """Load a bundle written by ``autotl export``: ``autotl.load(BUNDLE).predict(inputs)``.

    See :func:`autotl.bundle.load`.
    """
    from .bundle import load as _load

    return _load(path, device=device, engine=engine)


__all__ = [
    "AutotlError",
    "Backbone",
    "BackboneFamily",
    "DataReport",
    "ExportUnsupportedError",
    "ImagePreprocessing",
    "LoadedData",
    "Preprocessing",
    "Param",
    "Registry",
    "SkippedItem",
    "Task",
    "TensorSplit",
    "TextPreprocessing",
    "TrialData",
    "hookimpl",
    "is_under",
    "json_lines",
    "load",
    "load_without_head",
    "numbered_records",
    "stratified_split",
]
