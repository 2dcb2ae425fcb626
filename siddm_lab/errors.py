"""Errors that carry a message meant for the user (printed without a traceback)."""


class SiddmError(Exception):
    """Base class: the message says what is wrong and what is allowed."""


class ConfigError(SiddmError, ValueError):
    """A configuration value is invalid."""


def renamed(e: ConfigError, key: str, as_key: str) -> ConfigError:
    """``e`` with the key a lower layer named (``key``, e.g. ``sampler.steps``) replaced by the key the user set
    (``as_key``): the sampler that refuses a step count does not know which setting gave it."""
    return ConfigError(str(e).replace(f"{key}=", f"{as_key}=").replace(f"{key} ", f"{as_key} "))


class DataError(SiddmError, OSError):
    """A dataset is missing, incomplete or corrupt."""


class CheckpointError(SiddmError, OSError):
    """A checkpoint is missing, incompatible or unsafe."""


class NonFiniteLossError(SiddmError, FloatingPointError):
    """A loss became NaN or infinite; training stops and keeps the last good checkpoint."""


class NonFiniteSamplesError(SiddmError, FloatingPointError):
    """A model's samples (or their metrics) are NaN or infinite: no result is reported."""
