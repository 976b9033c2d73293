"""PNG of a phantom infant cohort (``scripts.data.phantom``, ``cohort=True``): middle axial T1, T2 and label slices of a
few subjects, one column each, titled with their age parameter; and (``heads``) PNG of phantom heads
(``head=True``, with and without ``randomize``, infant and adult). Run from the repository root:

    python -m tools.cohort_figure --num_subjects 6            # bundle/docs/figures/cohort.png, 6 subjects of seed 0
    python -m tools.cohort_figure heads                       # bundle/docs/figures/heads.png

matplotlib comes with the ``benchmark`` extra.
"""

import sys
from pathlib import Path

import fire
import numpy as np

from scripts.atomic import atomic_path
from scripts.data.phantom import make_subject, subject_seed
from tools import BUNDLE_ROOT

LABEL_COLOURS = ("black", "#3b8bff", "#2ca02c", "#ffd92f")  # background, CSF, GM, WM
# head tissues after the labels (``scripts.data.phantom_anatomy.HEAD_TISSUES``): skin/muscle, fat, bone, marrow,
# eye, spinal cord, spinal CSF
HEAD_COLOURS = ("#c97b63", "#f2d7a6", "#ffffff", "#d94f70", "#7fd3ff", "#b8a000", "#1f5fbf")
# (title, preset, voxel size in mm, options) of the columns of ``heads``: adults on the same grid with larger voxels,
# so that their field of view (and a brain filling 60-70 % of it) has adult size
HEAD_SUBJECTS = (
    ("infant", "infant", 1.0, {}),
    ("infant, randomized, folded", "infant", 1.0, {"randomize": True, "folded": True}),
    ("adult, folded", "adult", 1.35, {"folded": True}),
    ("adult, randomized, folded", "adult", 1.35, {"randomize": True, "folded": True}),
)
CELL_INCHES = 2.0
FIGURES_DIR = BUNDLE_ROOT / "docs" / "figures"


def draw(out=str(FIGURES_DIR / "cohort.png"), num_subjects=6, seed=0, shape=(144, 192, 256), dpi=100) -> str:
    """Draw subjects 1..``num_subjects`` of the cohort that ``write_iseg(seed=seed, cohort=True)`` writes; return
    the path. Each image is windowed to its own 99.5th percentile, so the panels show contrast, not scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    num_subjects = int(num_subjects)
    fig = Figure(figsize=(CELL_INCHES * num_subjects, CELL_INCHES * 3 * shape[1] / shape[0] + 0.4))
    axes = fig.subplots(3, num_subjects, squeeze=False)
    labels = ListedColormap(LABEL_COLOURS)
    for column in range(num_subjects):
        subject = make_subject(shape, "infant", subject_seed(seed, column + 1), cohort=True)
        middle = subject["label"].shape[2] // 2
        panels = [subject["images"]["t1"], subject["images"]["t2"], subject["label"]]
        for row, (volume, name) in enumerate(zip(panels, ("T1", "T2", "label"))):
            section = volume[:, :, middle].T  # rows posterior-anterior, columns left-right
            ax = axes[row, column]
            if name == "label":
                ax.imshow(section, cmap=labels, vmin=0, vmax=3, origin="lower", interpolation="nearest")
            else:
                ax.imshow(section, cmap="gray", vmin=0, vmax=np.percentile(volume[volume > 0], 99.5),
                          origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name)
        axes[0, column].set_title(f"subject-{column + 1}, age {subject['cohort']['age']:.2f}", fontsize=9)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.95, wspace=0.03, hspace=0.03)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return str(out)


def heads(out=str(FIGURES_DIR / "heads.png"), seed=0, shape=(144, 192, 256), dpi=100) -> str:
    """Draw phantom heads (``head=True``): one column per entry of ``HEAD_SUBJECTS`` (subjects 1, 2, ... of ``seed``
    as ``write_iseg`` numbers them), rows axial T1, coronal T1 and coronal label (brain tissues, then head tissues in
    ``HEAD_COLOURS``; label files keep the head as background). Slices pass through the centre of the cerebrum; images
    are windowed to their 0.5-99.5th percentiles (the background is noisy and may be negative). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    shape = tuple(int(n) for n in shape)
    columns = len(HEAD_SUBJECTS)
    height = CELL_INCHES * (shape[1] + 2 * shape[2]) / shape[0] + 0.6
    fig = Figure(figsize=(CELL_INCHES * columns, height))
    grid = fig.add_gridspec(3, columns, height_ratios=(shape[1], shape[2], shape[2]))
    colours = ListedColormap(LABEL_COLOURS + HEAD_COLOURS)
    for column, (title, preset, voxel, options) in enumerate(HEAD_SUBJECTS):
        subject = make_subject(shape, preset, subject_seed(seed, column + 1), (voxel,) * 3, head=True, **options)
        image = subject["images"]["t1"]
        tissues = np.where(subject["head"] > 0, subject["head"] + 3, subject["label"])
        cerebrum = np.isin(subject["structures"], (1, 2, 3, 4, 6))  # not the CSF shell, cerebellum or brainstem
        centre = np.rint(np.argwhere(cerebrum).mean(axis=0)).astype(int)
        low, high = np.percentile(image, (0.5, 99.5))
        sections = [(image[:, :, centre[2]].T, "axial T1"), (image[:, centre[1], :].T, "coronal T1"),
                    (tissues[:, centre[1], :].T, "coronal label")]
        for row, (section, name) in enumerate(sections):
            ax = fig.add_subplot(grid[row, column])
            if row == 2:
                ax.imshow(section, cmap=colours, vmin=0, vmax=len(LABEL_COLOURS) + len(HEAD_COLOURS) - 1,
                          origin="lower", interpolation="nearest")
            else:
                ax.imshow(section, cmap="gray", vmin=low, vmax=high, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(f"{title}\n{voxel:g} mm voxels", fontsize=9)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.94, wspace=0.03, hspace=0.03)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return str(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["heads"]:
        fire.Fire(heads, command=sys.argv[2:])
    else:
        fire.Fire(draw)
