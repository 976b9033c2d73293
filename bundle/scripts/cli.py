"""Helpers for values given on the ``monai.bundle`` command line."""

from __future__ import annotations


def as_bool(value) -> bool:
    """A flag as a bool. ``fire`` passes ``--flag false`` as the string ``'false'``, which Python counts as true,
    so ``true/false/yes/no/1/0`` strings (any case) are parsed; anything else is an error."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return word in ("true", "yes", "1")
    return bool(value)
