"""Figures used across chapters, sized to read well at book width (about 7 inches)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

BOOK_WIDTH = 7.0

# One colour per method across the book (colour-blind-safe "colorblind" palette of seaborn), so a
# method looks the same in every figure of every chapter.
_CB = sns.color_palette("colorblind", 10)
METHOD_COLOURS = {
    "Vanilla": _CB[0],
    "ERM": _CB[0],
    "Biased": _CB[7],
    "ReBias": _CB[3],
    "RUBi": _CB[2],
    "LearnedMixin+H": _CB[4],
    "MaskTune": _CB[3],
    "JTT": _CB[2],
    "GroupDRO": _CB[4],
    "LfF": _CB[1],
    "CAML": _CB[3],
}


def method_colour(name: str):
    """The book's colour for a method name (its first word also matches, e.g. "ReBias, λ = 1"),
    or None for matplotlib's next colour."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    head = name.replace(",", " ").split()[0] if name.strip() else name
    return METHOD_COLOURS.get(head)


def use_book_style() -> None:
    """Consistent, legible defaults for every chapter."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "axes.titleweight": "bold",
            "figure.autolayout": False,
        }
    )
    _retina_inline_figures()


def _retina_inline_figures() -> None:
    """Inline PNGs at twice the pixels, displayed at the same size (sharp on high-density
    screens: the notebook output records the display width, which the HTML book honours)."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: no inline figures to configure
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    img = img.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] in (1, 3):
        img = img.permute(1, 2, 0)
    img = img.squeeze(-1) if img.dim() == 3 and img.shape[-1] == 1 else img
    return img.numpy()


def image_grid(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 10,
    *,
    suptitle: str | None = None,
    cmap: str = "gray",
    cell: float = 0.7,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
):
    """Show images (N, C, H, W) or (N, H, W) with values in [vmin, vmax] in a grid; returns the
    figure."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(min(BOOK_WIDTH, cell * ncols), cell * nrows * 1.15 + 0.3),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(images[i]), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, pad=2)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(
    histories: Mapping[str, object],
    metrics: Sequence[str],
    *,
    titles: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
):
    """One panel per metric, one line per run. ``histories`` maps a run name to a History or
    DataFrame."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(BOOK_WIDTH, 2.8), squeeze=False)
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        used = []
        for name, h in histories.items():
            df = h.frame() if hasattr(h, "frame") else h
            if metric in df:
                colour = method_colour(name)
                colour = None if colour in used else colour  # two runs of one method: cycle
                used.append(colour)
                ax.plot(df.index, df[metric], marker="o", ms=3, label=name, color=colour)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(ylabels[j] if ylabels else metric)
        ax.set_title(titles[j] if titles else metric, fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:  # beside the last panel, where it cannot cover a curve
        axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def heatmap(
    table: np.ndarray,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    xticklabels="auto",
    yticklabels="auto",
    fmt: str = ".2f",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    ax=None,
    annot: bool = True,
    cbar_label: str | None = None,
):
    """Annotated heatmap; NaN cells (empty groups) are left blank."""
    own = ax is None
    if own:
        size = min(BOOK_WIDTH, 0.55 * table.shape[1] + 2.2)
        fig, ax = plt.subplots(figsize=(size, min(6.0, 0.45 * table.shape[0] + 1.6)))
    sns.heatmap(
        table,
        annot=annot,
        fmt=fmt,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        ax=ax,
        square=False,
        xticklabels=xticklabels,
        yticklabels=yticklabels,
        annot_kws={"fontsize": 7},
        cbar_kws={"label": cbar_label} if cbar_label else None,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if own:
        ax.figure.tight_layout()
    return ax.figure


def confusion_heatmap(
    cm: np.ndarray,
    *,
    title: str,
    class_names=None,
    ax=None,
    ylabel: str = "true class",
    colorbar: bool = True,
):
    """Row-normalised confusion matrix (row = true class, column = predicted class), annotated in
    whole percent so that a 10×10 matrix stays legible in half the page width. ``colorbar=False``
    leaves the scale to a neighbouring panel (all panels share 0–100 %)."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if cm.max() > 1 else cm
    names = class_names if class_names is not None else list(range(cm.shape[0]))
    fig = heatmap(
        100 * norm,
        xlabel="predicted class",
        ylabel=ylabel,
        title=title,
        xticklabels=names,
        yticklabels=names,
        ax=ax,
        cmap="Blues",
        fmt=".0f",
        vmin=0.0,
        vmax=100.0,
        cbar_label="% of the row",
    )
    if not colorbar:
        (ax or fig.axes[0]).collections[0].colorbar.remove()
    return fig


def group_heatmap(
    table: np.ndarray,
    *,
    title: str,
    target_names=None,
    bias_names=None,
    ax=None,
    target_label: str = "target (digit)",
    bias_label: str = "bias attribute (colour)",
    fmt: str = ".2f",
):
    """(target × bias) accuracy table, e.g. digit × background colour."""
    return heatmap(
        table,
        fmt=fmt,
        xlabel=bias_label,
        ylabel=target_label,
        title=title,
        xticklabels=bias_names if bias_names is not None else "auto",
        yticklabels=target_names if target_names is not None else "auto",
        ax=ax,
        cbar_label="accuracy",
        cmap="magma",
    )


def examples_per_group(
    y: torch.Tensor, bias: torch.Tensor, groups: Mapping[str, tuple[int, int]], n_each: int = 2
) -> tuple[torch.Tensor, list[str]]:
    """The first ``n_each`` indices of each named (target, bias) group, and a title per index (for
    galleries)."""
    idx, titles = [], []
    for name, (target, b) in groups.items():
        found = ((y == target) & (bias == b)).nonzero().flatten()[:n_each]
        idx += found.tolist()
        titles += [name] * len(found)
    return torch.tensor(idx, dtype=torch.long, device=y.device), titles


def image_rows(
    rows: Sequence[tuple[str, torch.Tensor]],
    column_titles: Sequence[str],
    *,
    title: str,
    heat: str = "saliency",
):
    """A gallery: one row per (name, images) pair, one column per example. Images are (N, 3, H, W)
    colour or (N, H, W) maps in [0, 1]; rows whose name contains ``heat`` use a heat colour map, the
    others grey."""
    ncols = len(column_titles)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(BOOK_WIDTH, 0.9 * len(rows) + 0.5), squeeze=False
    )
    for r, (name, images) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            img = images[c].detach().float().cpu()
            if img.dim() == 3:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            else:
                ax.imshow(
                    img.numpy(),
                    cmap="inferno" if heat in name else "gray",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
