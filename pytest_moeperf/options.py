"""Command-line and ini values, parsed and checked by one set of rules (as argparse types, in the manner of
pytest-benchmark's utils.parse_*): a bad value is a usage error that names the option, never a silent default."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number_between(low: float, high: float, *, low_inclusive: bool = False, high_inclusive: bool = False
                   ) -> Callable[[str], float]:
    """A finite number in (low, high), either end closed on request: the same bounds as the scenario keys."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not math.isfinite(value) or not (above and below):
            raise argparse.ArgumentTypeError(f"must lie in {'[' if low_inclusive else '('}{low:g}, {high:g}"
                                             f"{']' if high_inclusive else ')'}, got {text!r}")
        return value
    parse.__name__ = "number"  # what argparse calls the type in its messages
    return parse


def whole_number(low: int) -> Callable[[str], int]:
    """An integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


THRESHOLD = number_between(0, 10)  # as the scenario key `threshold`
NOISE_FLOOR_US = number_between(0, 1e6, low_inclusive=True)
INJECT_SLOWDOWN = number_between(0, 10, high_inclusive=True)
CPU_MAX_BATCH = whole_number(1)
TUNE_MAX_CONFIGS = whole_number(1)
BOOLEAN = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False,
           "": False}


def ini_value(config, name: str, parse: Callable[[str], object]):
    """An ini option (pytest.ini, pyproject.toml, or `-o name=value`) parsed by `parse`: None when unset; a bad value
    raises a ValueError that names the ini key."""
    raw = config.getini(name)
    if raw in (None, ""):
        return None
    try:
        return parse(str(raw).strip())
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"ini option {name} (-o {name}=...): {e}") from None


def ini_bool(config, name: str) -> bool:
    raw = str(config.getini(name)).strip().lower()
    if raw not in BOOLEAN:
        raise ValueError(f"ini option {name} (-o {name}=...): must be true or false, got {raw!r}")
    return BOOLEAN[raw]
