"""Benchmarks, figures and converters of the MRI-GAN bundle, kept outside the shipped bundle (``bundle/``).

Run them from the repository root, e.g. ``python -m tools.benchmark_comparison run --profile cpu``. Importing
``tools`` puts the bundle root first on ``sys.path``, so tools import the bundle's code as ``scripts``. Defaults that
name files of the bundle are absolute paths under ``BUNDLE_ROOT`` (e.g. ``BUNDLE_ROOT / "runs" / "comparison"``);
paths given on the command line are relative to the current directory (``bundle/models/model.pt``).
"""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


def subprocess_env(**variables: str) -> dict[str, str]:
    """``os.environ`` plus ``variables``, with the repository and bundle roots first on ``PYTHONPATH``: a child
    process imports ``tools`` and ``scripts`` whatever its working directory."""
    paths = (str(REPO_ROOT), str(BUNDLE_ROOT), os.environ.get("PYTHONPATH"))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), **variables)
