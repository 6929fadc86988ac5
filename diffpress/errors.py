"""Errors raised by diffpress. Every message names the field, the value and what is allowed."""


class DiffpressError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class InputError(DiffpressError):
    """A user-supplied path, checkpoint or option is missing, malformed or unsupported."""


class IntegrityError(DiffpressError):
    """A compressed checkpoint does not match its recorded checksums or layer plan."""


class OutputExistsError(DiffpressError):
    """The output directory exists and overwriting was not requested."""
