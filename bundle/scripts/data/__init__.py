"""Where the images come from: dataset folders and splits, MONAI Label studies, procedural phantoms."""
