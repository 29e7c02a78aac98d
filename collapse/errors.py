"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """First line of an exception's message (for one-line errors), or its type name when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


class CollapseError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class ConfigError(CollapseError):
    """Unknown key, wrong type or out-of-range value."""


class DataError(CollapseError):
    """Missing file, absent text field, empty or too-short data."""


class ModelError(CollapseError):
    """Model folder or hub id that cannot be loaded, context too short, bad LoRA targets."""


class TrainingError(CollapseError):
    """Training diverged (NaN/inf loss)."""
