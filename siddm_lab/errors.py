"""Errors that carry a message meant for the user (printed without a traceback)."""


class SiddmError(Exception):
    """Base class: the message says what is wrong and what is allowed."""


class ConfigError(SiddmError, ValueError):
    """A configuration value is invalid."""


class DataError(SiddmError, OSError):
    """A dataset is missing, incomplete or corrupt."""


class CheckpointError(SiddmError, OSError):
    """A checkpoint is missing, incompatible or unsafe."""


class NonFiniteLossError(SiddmError, FloatingPointError):
    """A loss became NaN or infinite; training stops and keeps the last good checkpoint."""
