"""Custom code of the MRI-GAN bundle, imported as ``scripts`` from the bundle root."""
