"""The pictures of a caer_clip run: the test confusion matrix as CSV and, with matplotlib, as PNG.
train.py calls it at the end of a run; matplotlib is imported only here, and only when installed."""

import textwrap
from pathlib import Path

import numpy as np


def save_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """CSV always; PNG when matplotlib is installed: counts per cell in a colour that reads on the
    cell (white on dark, black on light), each row's recall beside it, a colour bar, `title` on top."""
    with open(path.with_suffix(".csv"), "w") as f:
        f.write("true\\pred," + ",".join(names) + "\n")
        for name, row in zip(names, cm):
            f.write(name + "," + ",".join(str(int(v)) for v in row) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the CSV is the record; the picture is optional
        print("confusion matrix PNG skipped: pip install matplotlib")
        return
    n = len(names)
    cell = 1.1  # inches per cell: 110 px at dpi 100
    fig, ax = plt.subplots(figsize=(cell * n + 4.2, cell * n + 2.6), dpi=100)
    shown = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    totals = cm.sum(axis=1)
    ax.set_xticks(range(n), names, rotation=30, ha="right", fontsize=11)
    ax.set_yticks(range(n), [f"{name} ({int(t)})" for name, t in zip(names, totals)], fontsize=11)
    for i in range(n):
        for j in range(n):
            red, green, blue, _ = shown.cmap(shown.norm(cm[i, j]))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived brightness of the cell
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=14,
                    fontweight="bold" if i == j else "normal", color="white" if dark else "black")
        recall = f"{cm[i, i] / totals[i]:.0%}" if totals[i] else "-"
        ax.text(n - 0.5 + 0.15, i, recall, ha="left", va="center", fontsize=11, color="dimgray")
    ax.text(n - 0.5 + 0.15, -0.75, "recall", ha="left", va="center", fontsize=11, color="dimgray")
    ax.set_xlabel("predicted class", fontsize=12)
    ax.set_ylabel("true class (clips)", fontsize=12)
    ax.set_title(textwrap.fill(title, 72), fontsize=12, pad=22)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.12)
    bar.set_label("clips")
    bar.ax.yaxis.get_major_locator().set_params(integer=True)  # counts: whole numbers only
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)
