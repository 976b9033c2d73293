"""Benchmark scripts: their command lines fail fast."""

import pytest

from scripts.benchmark_training import profile


def test_training_profile_refuses_unknown_options_before_running():
    """``python -m scripts.benchmark_training run --help`` once trained for minutes: fire passes ``help`` on as an
    override. Unknown keys now stop it before anything is built."""
    with pytest.raises(ValueError, match=r"\['help'\] are not keys"):
        profile(help=True)
