"""Figures for run and evaluation reports, as PNG bytes: confusion matrices, learning curves.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state), so they are safe to
make in worker processes and threads.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(matrix: np.ndarray, names: list[str], title: str = "") -> bytes:
    """A confusion matrix (reference rows, map or predicted columns) as PNG: cells shaded by
    the share of their reference class (row-normalised: recall on the diagonal), annotated
    with pixel counts and shares."""
    m = np.asarray(matrix, dtype=np.int64)
    k = len(names)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    edge = max(4.0, 1.0 + 0.9 * k)
    fig = _figure(edge + 1.5, edge)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the reference class")
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("map class")
    ax.set_ylabel("reference class")
    ax.set_title(title or f"Confusion matrix ({int(m.sum()):,} reference pixels)")
    fontsize = max(5, min(9, 60 // max(k, 1)))
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{m[i, j]:,}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=fontsize,
            )
    return _png(fig)


def plot_learning_curves(history: list[dict[str, Any]]) -> bytes:
    """Training loss and validation OA / mIoU per epoch, as PNG."""
    epochs = [h["epoch"] for h in history]
    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
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
    return _png(fig)
