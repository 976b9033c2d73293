"""PNG of a phantom infant cohort (``scripts.phantom``, ``cohort=True``): middle axial T1, T2 and label slices of a
few subjects, one column each, titled with their age parameter. Run from the bundle root:

    python -m scripts.cohort_figure --num_subjects 6            # docs/figures/cohort.png, 6 subjects of seed 0

matplotlib comes with the ``benchmark`` extra.
"""

from pathlib import Path

import fire
import numpy as np

from .atomic import atomic_path
from .phantom import _subject_seed, make_subject

LABEL_COLOURS = ("black", "#3b8bff", "#2ca02c", "#ffd92f")  # background, CSF, GM, WM
CELL_INCHES = 2.0


def draw(out="docs/figures/cohort.png", num_subjects=6, seed=0, shape=(144, 192, 256), dpi=100) -> str:
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
        subject = make_subject(shape, "infant", _subject_seed(seed, column + 1), cohort=True)
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


if __name__ == "__main__":
    fire.Fire(draw)
