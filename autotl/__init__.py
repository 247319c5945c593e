"""autotl: automated transfer learning.

The Python API (see autotl/api.py and docs/guide.md, "From Python"):

- ``autotl.search(DATA, task=..., ...)`` runs a search, as ``autotl search`` does, and returns its
  :class:`~autotl.api.SearchResult` (with the run, opened);
- ``autotl.open_run(RUN_FOLDER)`` (or ``storage=``, ``study=``) opens a search's run: its trials, their
  configurations and test scores, a trial's trained network, the data as the search split it;
- ``autotl.load(BUNDLE)`` loads a bundle written by ``autotl export``: ``.predict(inputs)``.
"""

from .base import (Backbone, BackboneFamily, ExportUnsupportedError, LoadedData, Registry, Target, Task,
                   TensorSplit, TrialData)
from .contracts import DataReport, FittedRange, ImagePreprocessing, Preprocessing, SkippedItem, TextPreprocessing
from .errors import AutotlError
from .hookspecs import hookimpl
from .utils import (is_under, json_lines, load_without_head, numbered_records, quantile_bins, set_stratified_split,
                    stratified_split)
from .params import Param
from .api import load, open_run, search

__version__ = "0.1.0"


__all__ = [
    "AutotlError",
    "Backbone",
    "BackboneFamily",
    "DataReport",
    "ExportUnsupportedError",
    "FittedRange",
    "ImagePreprocessing",
    "LoadedData",
    "Preprocessing",
    "Param",
    "Registry",
    "SkippedItem",
    "Target",
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
    "quantile_bins",
    "set_stratified_split",
    "stratified_split",
    "open_run",
    "search",
]
