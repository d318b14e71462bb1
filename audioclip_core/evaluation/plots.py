"""Pictures where people would rather look: training curves, confusion matrices, PR curves,
2-D embedding maps. PNG files, drawn headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict], path: Path, title: str = "") -> Path:
    """Loss terms and learning rate per epoch."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k in h if k.startswith("loss")})
    for k in keys:
        ax1.plot(epochs, [h.get(k, np.nan) for h in history], marker="o", label=k)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(fontsize=7)
    ax2.plot(epochs, [h.get("lr", np.nan) for h in history], marker="o", color="tab:gray")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("learning rate")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    """`curves`: name -> (recall, precision) arrays."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (rec, prec) in curves.items():
        ax.plot(rec, prec, label=name)
    ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7), ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_embedding_map(
    points: dict[str, np.ndarray], labels: dict[str, Sequence[str]], path: Path, title: str = ""
) -> Path:
    """2-D PCA of the union of the embeddings of each modality, coloured by label, marker by modality."""
    plt = _plt()
    allpts = np.concatenate(list(points.values()))
    centred = allpts - allpts.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T
    markers = {"audio": "o", "image": "s", "text": "*"}
    names = sorted({name for ls in labels.values() for name in ls})
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(6, 5))
    start = 0
    for mod, pts in points.items():
        p = proj[start : start + len(pts)]
        start += len(pts)
        ax.scatter(
            p[:, 0],
            p[:, 1],
            c=[colors[name] for name in labels[mod]],
            marker=markers.get(mod, "o"),
            s=90 if mod == "text" else 30,
            edgecolors="k",
            linewidths=0.3,
            label=mod,
        )
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[n], label=n) for n in names]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(title or "embeddings (PCA): o audio, s image, * text", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_figures(figures, folder: Path) -> list[Path]:
    """PNG files of a table's figures (`tables.Confusion`, `PRCurves`, `EmbeddingMap`), named by
    each figure's name, under `folder`."""
    from .tables import Confusion, EmbeddingMap, PRCurves

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fig in figures:
        path = folder / f"{fig.name}.png"
        if isinstance(fig, Confusion):
            out.append(plot_confusion(fig.matrix, fig.classes, path, fig.title))
        elif isinstance(fig, PRCurves):
            out.append(plot_pr_curves(fig.curves, path, fig.title))
        elif isinstance(fig, EmbeddingMap):
            out.append(plot_embedding_map(fig.points, fig.labels, path, fig.title))
        else:
            raise TypeError(f"not a table figure: {type(fig).__name__}")
    return out
