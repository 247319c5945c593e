"""autotl: automated transfer learning.

The Python API (see autotl/api.py and docs/guide.md, "From Python"):

- ``autotl.search(DATA, task=..., ...)`` runs a search, as ``autotl search`` does, and returns its
  :class:`~autotl.api.SearchResult` (with the run, opened);
- ``autotl.open_run(RUN_FOLDER)`` (or ``storage=``, ``study=``) opens a search's run: its trials, their
  configurations and test scores, a trial's trained network, the data as the search split it;
- ``autotl.load(BUNDLE)`` loads a bundle written by ``autotl export``: ``.predict(inputs)``.

``autotl.search`` is also the module of the search controller (:mod:`autotl.search`); calling it runs
:func:`autotl.api.search`.
"""

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
    from .bundle import load as load_bundle

    return load_bundle(path, device=device, engine=engine)


def open_run(run=None, *, storage=None, study=None, registry=None):
    """Open the run of a search by its run folder, or by ``storage`` and ``study``: a :class:`autotl.run.Run`.

    See :func:`autotl.run.open_run`.
    """
    from .run import open_run as open_

    return open_(run, storage=storage, study=study, registry=registry)


def __getattr__(name):
    if name == "search":  # the module, callable: autotl.search(DATA, task=...) runs autotl.api.search
        import importlib

        return importlib.import_module(f"{__name__}.search")
    raise AttributeError(f"module 'autotl' has no attribute {name!r}")


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
    "open_run",
    "search",
]
