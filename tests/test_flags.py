"""Command-line flag parsing (``scripts.checks.as_bool``): fire passes ``--flag false`` as a string."""

import pytest

from scripts.checks import as_bool


@pytest.mark.parametrize("value", ["true", "True", " YES ", "1", True, 1])
def test_true_values(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", ["false", "False", "no", "0", False, 0, None])
def test_false_values(value):
    assert as_bool(value) is False


def test_other_words_are_an_error():
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        as_bool("maybe")
