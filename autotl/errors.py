"""The exception tree. The CLI turns every :class:`AutotlError` into one line and a non-zero exit."""


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
