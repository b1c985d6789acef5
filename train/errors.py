"""The error type for anything a user got wrong: printed as one line, never a traceback."""


class TrainError(Exception):
    """A user-facing error: bad input, missing file, refused export."""
