"""Where the images come from: dataset folders and splits, MONAI Label studies, procedural phantoms, scans rendered
from real label maps, and writing such generated datasets once (``writing``)."""
