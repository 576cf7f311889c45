"""Figures for run and evaluation reports: confusion matrices and learning curves (PNG)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _figure_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_confusion(matrix: np.ndarray, names: list[str], title: str = "") -> bytes:
    """A confusion matrix (reference rows, predicted columns) as PNG: row-normalised colours
    (recall per class) with the pixel counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(names)
    size = max(4.0, 0.8 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(m[i, j]):,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of reference class")
    if title:
        ax.set_title(title)
    return _figure_bytes(fig)


def plot_learning_curves(history: list[dict[str, Any]]) -> bytes:
    """Training loss and validation OA / mIoU per epoch, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    if any(h.get("val_pixels") for h in history):
        ax2.plot(epochs, [h["val_oa"] for h in history], marker="o", label="overall accuracy")
        ax2.plot(epochs, [h["val_miou"] for h in history], marker="s", label="mean IoU")
        ax2.set_ylim(0, 1)
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no validation chips", ha="center", va="center")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.grid(alpha=0.3)
    return _figure_bytes(fig)
