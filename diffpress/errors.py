"""Errors raised by diffpress. Every message names the field, the value and what is allowed."""


class DiffpressError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2.

    `option`: the API parameter the bad value came in through (e.g. "labels", "calibration"), when
    the raiser knows it; the CLI names the matching command-line option in its message.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InputError(DiffpressError, ValueError):
    """A user-supplied path, checkpoint, option or value is missing, malformed or unsupported.

    Also a ValueError, so code that guards a call with `except ValueError` keeps working.
    """


class IntegrityError(DiffpressError):
    """A compressed checkpoint does not match its recorded checksums or layer plan."""


class OutputExistsError(DiffpressError):
    """The output directory exists and overwriting was not requested."""


class OutputBusyError(DiffpressError):
    """Another run is writing the same output directory."""


class OutputWriteError(DiffpressError):
    """The output cannot be written: no space left, no permission, a read-only filesystem."""


class NumericError(DiffpressError):
    """NaN or Inf appeared in weights, activations or outputs (the message names the layer and timestep)."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """An exception's text on one line (whitespace collapsed), at most `limit` characters."""
    return " ".join(str(error).split())[:limit]


def require_int(value, name: str, minimum: int) -> None:
    """InputError naming `name` unless `value` is an integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}", name)
