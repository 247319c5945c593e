"""autotl: automated transfer learning."""

from .base import (Backbone, BackboneFamily, ExportUnsupportedError, LoadedData, Registry, Task, TensorSplit,
                   TrialData)
from .errors import AutotlError
from .hookspecs import hookimpl
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
    "ExportUnsupportedError",
    "LoadedData",
    "Param",
    "Registry",
    "Task",
    "TensorSplit",
    "TrialData",
    "hookimpl",
    "load",
]
