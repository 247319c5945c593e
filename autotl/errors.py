"""The exception tree. The CLI turns every :class:`AutotlError` into one line and a non-zero exit."""

#: every exit code of the ``autotl`` command and what it means; docs/guide.md and ``autotl --help``
#: show this table (a test keeps them in step with the error classes).
EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: rerun with --debug and report it)",
    2: "usage: a bad option, recipe or device",
    3: "unusable data",
    4: "a model or its weights cannot be had",
    5: "a plugin failed to load or broke the contract",
    6: "a run folder or study is missing or does not match",
    7: "a bundle is missing, incomplete, or its weights fail their checksum",
    8: "the search stopped after --max-failures failed trials (every finished trial is kept)",
    130: "interrupted; finished trials are kept",
}
EXIT_TOO_MANY_FAILURES = 8
EXIT_INTERRUPTED = 130


class AutotlError(Exception):
    """Base of every error that autotl reports to a user as a one-line message.

    The message names what is wrong and what to do about it.
    """

    exit_code = 1


class UsageError(AutotlError):
    """A command-line option or recipe value that cannot be used."""

    exit_code = 2


class DataError(AutotlError):
    """The dataset cannot be used: missing folder, single class, empty class, bad file."""

    exit_code = 3


class ModelUnavailableError(AutotlError):
    """A source model is unknown, or its weights cannot be had (offline, missing file)."""

    exit_code = 4


class PluginError(AutotlError):
    """A plugin failed to load or broke the plugin contract."""

    exit_code = 5


class RunError(AutotlError):
    """A run folder or study is missing, or does not match the command."""

    exit_code = 6


class BundleError(AutotlError):
    """A bundle is missing, corrupted, tampered with, or needs a plugin that is not installed."""

    exit_code = 7


class UnreadableInputs(DataError):
    """Some inputs given to predict cannot be read (an image that does not decode, a broken link).

    ``problems`` holds ``(index, reason)`` for each, indices into the items given. ``autotl predict``
    skips them, lists them and predicts the rest; the Python API raises this (a :class:`DataError`).
    """

    def __init__(self, message: str, problems: list[tuple[int, str]]):
        super().__init__(message)
        self.problems = problems
