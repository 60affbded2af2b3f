"""The command line's parser class and option types: every range is checked when the command line
is read, and a bad value is one line ``error: ...`` with exit code 2."""

from __future__ import annotations

import argparse

from .errors import one_line


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line ``error: ...`` (exit code 2)."""

    def error(self, message):
        self.exit(2, f"error: {one_line(message)} (see `{self.prog} --help`)\n")


# -- option types: every range is checked when the command line is read ------------------------------
def _number(kind, text, test, what):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and v != v:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not test(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def positive_int(text):
    return _number(int, text, lambda v: v >= 1, ">= 1")


def nonnegative_int(text):
    return _number(int, text, lambda v: v >= 0, ">= 0")


def positive_float(text):
    return _number(float, text, lambda v: 0 < v < float("inf"), "a finite number > 0")


def unit_interval(text):  # (0, 1]
    return _number(float, text, lambda v: 0 < v <= 1, "in (0, 1]")


def probability(text):  # [0, 1]
    return _number(float, text, lambda v: 0 <= v <= 1, "in [0, 1]")


def open_fraction(text):  # (0, 1)
    return _number(float, text, lambda v: 0 < v < 1, "in (0, 1)")


def holdout_fraction(text):  # [0, 1)
    return _number(float, text, lambda v: 0 <= v < 1, "in [0, 1)")


def nonnegative_float(text):
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def auto_or_nonnegative_float(text):  # "auto" -> None
    if str(text).strip().lower() == "auto":
        return None
    return _number(float, text, lambda v: 0 <= v < float("inf"), "'auto' or a finite number >= 0")


def seed_list(text):
    parts = [t.strip() for t in text.split(",")]
    if not parts or any(not t for t in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}")
    seeds = [_number(int, t, lambda v: v >= 0, "integers >= 0") for t in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is given twice: {text!r}")
    return seeds
