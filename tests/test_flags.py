"""Command-line flag parsing (``scripts.checks.as_bool``, ``as_optional``): fire passes ``--flag false`` and
``--key null`` as strings; the comparison benchmark's overrides reach the bundle as the values it meant."""

import pytest
from fire.parser import DefaultParseValue

from scripts.checks import as_bool, as_optional
from tools.benchmark_comparison import _overrides


@pytest.mark.parametrize("value", ["true", "True", " YES ", "1", True, 1])
def test_true_values(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", ["false", "False", "no", "0", False, 0, None])
def test_false_values(value):
    assert as_bool(value) is False


def test_other_words_are_an_error():
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        as_bool("maybe")


@pytest.mark.parametrize("value", ["null", " None ", "NULL", None])
def test_null_words_are_none(value):
    assert as_optional(value) is None


@pytest.mark.parametrize("value", [2, 0.01, "nothing", "@gan#fake_patches"])
def test_other_values_pass_unchanged(value):
    assert as_optional(value) == value


def test_comparison_overrides_parse_back_to_their_values_on_the_bundle_command_line():
    values = {"gan#fake_patches": None, "gan#fake_augmentation": False, "gan#flip_maps": True, "seed": 2,
              "data#intensity_gap": 0.5, "output_dir": "/tmp/run dir", "gan#generator_start": "@gan#warmup",
              "config_file": ["configs/train.yaml", "configs/supervised.yaml"]}  # fmt: skip
    args = _overrides(values)
    assert args[::2] == [f"--{key}" for key in values]
    assert [DefaultParseValue(a) for a in args[1::2]] == list(values.values())
