"""Shared pytest fixtures: puts the bundle root on ``sys.path`` so ``import scripts`` works."""

import sys
from pathlib import Path

import pytest

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    """Path of the bundle folder (the one holding ``configs/`` and ``scripts/``)."""
    return BUNDLE_ROOT
