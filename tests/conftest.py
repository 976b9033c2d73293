"""Shared pytest fixtures: puts the repository and bundle roots on ``sys.path`` so ``import tools`` and
``import scripts`` work."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
for root in (REPO_ROOT, BUNDLE_ROOT):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    """Path of the bundle folder (the one holding ``configs/`` and ``scripts/``)."""
    return BUNDLE_ROOT
