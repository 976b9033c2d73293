"""Networks of the MRI-GAN bundle."""

from .generators import (
    GTLayer,
    MRIGANGenerator,
    StandardGANGenerator,
    class_intensity_statistics,
    tissue_boundaries,
    tissue_onehot,
)
from .segmenter import Segmenter

__all__ = [
    "GTLayer",
    "MRIGANGenerator",
    "Segmenter",
    "StandardGANGenerator",
    "class_intensity_statistics",
    "tissue_boundaries",
    "tissue_onehot",
]
