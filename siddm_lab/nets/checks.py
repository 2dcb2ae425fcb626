"""Checks of the nets' hyper-parameters, run when a net is built.

A bad width, depth, channel multiplier or size is a ConfigError naming the config key (``net.hidden``,
``discriminator.ch``), the value and what is allowed, before any work: not a TypeError from inside torch,
nor a reshape error at the first forward pass. The CLI reports it as one line (``user_errors``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from siddm_lab.errors import ConfigError


def _invalid(key: str, v, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={v!r} is invalid: expected {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(key: str, v, minimum: int = 1) -> int:
    """``v`` if it is an integer >= ``minimum`` (bools and floats are not: nn.Linear(2, True) builds)."""
    if not _is_int(v) or v < minimum:
        raise _invalid(key, v, f"an integer >= {minimum}")
    return v


def check_number(key: str, v, ok: Callable[[float], bool], allowed: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
        raise _invalid(key, v, allowed)
    return v


def check_int_list(key: str, v, minimum: int = 1, non_empty: bool = False) -> list[int]:
    """``v`` as a list if it is a list (or tuple, or Hydra ListConfig) of integers >= ``minimum``."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or (non_empty and not len(v)) \
            or not all(_is_int(x) and x >= minimum for x in v):
        raise _invalid(key, v if not isinstance(v, Sequence) or isinstance(v, str) else list(v),
                       f"a {'non-empty ' if non_empty else ''}list of integers >= {minimum}")
    return list(v)


def check_group_norm(prefix: str, ch: int, channel_mult: list[int], channels: list[int], groups: int = 32) -> None:
    """Every GroupNorm of the net (min(groups, C) groups over C channels) must divide its channels;
    ``channels`` are the counts the net's GroupNorms see, which follow from ``ch`` and ``channel_mult``."""
    for c in channels:
        if c % min(groups, c):
            extra = f" or a smaller {prefix}.norm_groups that divides {c}" if prefix == "net" else ""
            raise ConfigError(
                f"{prefix}.ch={ch} with {prefix}.channel_mult={channel_mult} gives a block of {c} channels, which "
                f"GroupNorm's {min(groups, c)} groups do not divide; allowed: {prefix}.ch a multiple of {groups} "
                f"(then every block's channels are){extra}")


def check_choice(key: str, v, choices: Sequence[str]) -> str:
    """``v`` if it is one of ``choices`` (strings)."""
    if not isinstance(v, str) or v not in choices:
        raise _invalid(key, v, f"one of {', '.join(repr(c) for c in choices)}")
    return v


def check_bool(key: str, v) -> bool:
    if not isinstance(v, bool):
        raise _invalid(key, v, "true or false")
    return v
