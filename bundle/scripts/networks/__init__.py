"""Networks of the MRI-GAN bundle."""

from .segmenter import Segmenter

__all__ = ["Segmenter"]
