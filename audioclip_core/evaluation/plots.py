"""Pictures where people would rather look: training curves, confusion matrices, PR curves,
2-D embedding maps. PNG files, drawn headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict], path: Path, title: str = "", validation: Optional[dict] = None) -> Path:
    """Loss terms and learning rate per epoch; with `validation` (a fine-tuning's held-out
    scores, `TrainResult.validation`), its accuracy per epoch trained and the epoch kept."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3 if validation else 2, figsize=(13 if validation else 9, 3.2))
    ax1, ax2 = axes[0], axes[1]
    epochs = [h["epoch"] + 1 for h in history]  # epochs trained when the figures were taken
    keys = sorted({k for h in history for k in h if k.startswith("loss")})
    for k in keys:
        reference = k == "loss_uniform"  # 2 ln n, the value of uniform logits: a line to stay below
        ax1.plot(
            epochs,
            [h.get(k, np.nan) for h in history],
            marker="" if reference else "o",
            linestyle="--" if reference else "-",
            color="0.5" if reference else None,
            label="loss at uniform logits" if reference else k,
        )
    ax1.set_xlabel("epochs trained"), ax1.set_ylabel("loss")
    ax2.plot(epochs, [h.get("lr", np.nan) for h in history], marker="o", color="tab:gray")
    ax2.set_xlabel("epochs trained"), ax2.set_ylabel("learning rate")
    if validation:
        scores = validation.get("scores", [])
        ax3 = axes[2]
        ax3.plot([v["epoch"] for v in scores], [100 * v["accuracy"] for v in scores], marker="o", label="accuracy")
        kept = validation.get("kept_epoch")
        ax3.axvline(kept, color="tab:green", linestyle="--", label=f"kept: epoch {kept}")
        ax3.set_xlabel("epochs trained (0: start)"), ax3.set_ylabel("validation accuracy, %")
        ax3.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:  # whole epochs
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend below the loss panel, off its lines
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
    shapes = [
        plt.Line2D([], [], marker=markers.get(m, "o"), linestyle="", color="0.5", markeredgecolor="k", label=m)
        for m in points
    ]
    classes = ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="label")
    ax.add_artist(classes)
    ax.legend(handles=shapes, fontsize=7, loc="lower left", bbox_to_anchor=(1.0, 0.0), title="modality")
    ax.set_xlabel("principal component 1"), ax.set_ylabel("principal component 2")
    ax.set_title(title or "embeddings (PCA of all modalities together)", fontsize=9)
    fig.tight_layout()
    # both legends whole (given extra artists replace the default ones: the title is named too)
    fig.savefig(path, dpi=110, bbox_inches="tight", bbox_extra_artists=[classes, ax.get_legend(), ax.title])
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


def plot_table_summary(rows, path: Path, title: str = "") -> Path | None:
    """A table's mean results as horizontal bars (one per model, task, data set and metric), each
    with its chance level as a tick: the figure of a table that has no other (Table 3), and a
    glance at any. `rows`: the table's long-form frame (columns model, task, dataset, metric,
    value, chance, fold); None when it holds no mean value."""
    means = rows[rows["fold"] == "mean"] if "fold" in rows else rows
    means = means[means["value"].notna()]
    if not len(means):
        return None
    plt = _plt()
    task = "task" in means and means["task"].nunique() > 1  # Table 4: the query direction tells rows apart
    labels = [f"{r.model} | {f'{r.task} | ' if task else ''}{r.dataset} {r.metric}" for r in means.itertuples()]
    values = means["value"].astype(float).to_numpy()
    scale = 100.0 if np.nanmax(np.abs(values)) <= 1.0 else 1.0
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, values * scale, color="tab:blue")
    right = np.nanmax(values * scale)
    if "chance" in means:
        chance = means["chance"].astype(float).to_numpy() * scale
        ax.scatter(chance, y, marker="|", s=120, color="tab:red", label="chance", zorder=3)
        right = max(right, np.nanmax(chance) if np.isfinite(chance).any() else right)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(0, right * 1.12 if right > 0 else 1)
    for yi, v in zip(y, values * scale):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=6)
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("%" if scale == 100.0 else "value")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the long labels and the legend whole
    plt.close(fig)
    return path


def contact_sheet(images: Sequence[Path], path: Path, columns: int = 6, cell: int = 320) -> Path | None:
    """Every image of `images` scaled into a cell of a grid, in one PNG: all of a table's
    confusion matrices on one page. None when there is none."""
    from PIL import Image

    images = list(images)
    if not images:
        return None
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i, img_path in enumerate(images):
        with Image.open(img_path) as img:
            img = img.convert("RGB")
            img.thumbnail((cell, cell))
            r, c = divmod(i, columns)
            sheet.paste(img, (c * cell + (cell - img.width) // 2, r * cell + (cell - img.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def embedded_png(path: Path, alt: str = "", max_bytes: int = 100_000, width: int = 900) -> str:
    """Markdown that shows the PNG at `path` inline, as a base64 data URI (Dagster's markdown
    metadata renders it with no server behind it), downscaled until it is under `max_bytes`."""
    import base64
    import io

    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        data = b""
        while True:
            if img.width > width:
                img = img.resize((width, max(1, round(img.height * width / img.width))), Image.LANCZOS)
            buf = io.BytesIO()
            img.quantize(colors=128).save(buf, format="PNG", optimize=True)
            data = buf.getvalue()
            if len(data) <= max_bytes or width <= 160:
                break
            width = int(img.width * 0.75)
    return f"![{alt or path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})"
