"""autotl: automated transfer learning."""

from .base import Backbone, BackboneFamily, LoadedData, Registry, Task, TensorSplit, TrialData
from .errors import AutotlError
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "AutotlError",
    "Backbone",
    "BackboneFamily",
    "LoadedData",
    "Registry",
    "Task",
    "TensorSplit",
    "TrialData",
    "hookimpl",
]
