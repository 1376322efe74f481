"""Figures used across chapters, sized to read well at book width (about 7 inches).

One colour-blind-safe palette for the whole book (:data:`PALETTE`, seaborn's "colorblind", the
Okabe-Ito colours): ``use_book_style`` makes it matplotlib's colour cycle, and every helper here
draws with it (methods keep one colour each, :data:`METHOD_COLOURS`). Every figure shown inline
carries alt text for the HTML book: set with :func:`describe` (or :func:`show_figure`), or else
composed from its titles (see :func:`figure_alt`)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BOOK_WIDTH = 7.0

# The book's palette: seaborn's colour-blind-safe "colorblind" (blue, orange, green, vermilion,
# purple, brown, pink, grey, yellow, sky blue). Figures pick colours from it (PALETTE[0], ...),
# never named or hex colours, so every chapter draws one colour the same way.
PALETTE = sns.color_palette("colorblind", 10)
_CB = PALETTE
NEUTRAL = _CB[7]  # reference lines, chance levels, a "biased" baseline
# colour maps: sequential ones that stay ordered in grey and for colour-blind readers
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "vlag"
# One colour per method across the book, so a method looks the same in every figure of every
# chapter.
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
    """Consistent, legible defaults for every chapter: the book's palette as the colour cycle,
    and inline figures sharp on high-density screens and carrying alt text."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.9)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "axes.titleweight": "bold",
            "figure.autolayout": False,
        }
    )
    _retina_inline_figures()


def describe(fig: Figure, alt: str) -> Figure:
    """Give ``fig`` the alt text that the HTML book shows for it (what the figure shows, in a
    sentence or two, for a reader who cannot see it); returns the figure."""
    if not alt or not alt.strip():
        raise ValueError("alt text must say what the figure shows")
    fig._book_alt = " ".join(alt.split())
    return fig


def figure_alt(fig: Figure) -> str:
    """The alt text of ``fig``: the one :func:`describe` set, else one composed from its title,
    its panels' titles and axis labels."""
    own = getattr(fig, "_book_alt", None)
    if own:
        return own
    parts = []
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text().strip():
        parts.append(suptitle.get_text().strip())
    panels = []
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        title = " ".join(t for t in (ax.get_title("left"), ax.get_title()) if t.strip())
        axes_text = ", ".join(
            f"{name} {label}"
            for name, label in (("x:", ax.get_xlabel()), ("y:", ax.get_ylabel()))
            if label.strip()
        )
        panel = "; ".join(p for p in (title, axes_text) if p)
        if panel and panel not in panels:
            panels.append(panel)
    if panels:
        kind = "Panel" if len(panels) == 1 else f"{len(panels)} panels"
        parts.append(f"{kind}: " + " | ".join(panels[:12]))
    text = ". ".join(parts) if parts else "A figure without a title"
    return "Figure: " + " ".join(text.split())


def show_figure(fig: Figure, alt: str | None = None) -> None:
    """Show ``fig`` inline with its alt text (``alt``, or :func:`figure_alt`) and close it, so
    that the cell does not show it a second time; outside IPython, :func:`plt.show`."""
    if alt:
        describe(fig, alt)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        plt.show()
        return
    if get_ipython() is None:
        plt.show()
        return
    display(fig)
    plt.close(fig)


def png_with_alt(fig: Figure, base=None):
    """The inline PNG formatter's answer for ``fig`` with ``alt`` added to its metadata: (base64
    PNG, {"width", "height", "alt"}); ``base`` is the formatter it wraps (retina by default).
    The HTML build (helpers.book.page_fixes) writes the alt into the page's ``<img>``."""
    if base is None:
        from IPython.core.pylabtools import retina_figure

        def base(f):
            return retina_figure(f, base64=True)

    out = base(fig)
    if out is None:  # an empty figure draws nothing
        return None
    data, metadata = out if isinstance(out, tuple) else (out, {})
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode("ascii")
    return data, {**(metadata or {}), "alt": figure_alt(fig)}


def _retina_inline_figures() -> None:
    """Inline PNGs at twice the pixels, displayed at the same size (sharp on high-density
    screens: the notebook output records the display width, which the HTML book honours), each
    with its alt text in the output's metadata."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: no inline figures to configure
        return
    shell = get_ipython()
    if shell is None:
        return
    set_matplotlib_formats("retina")
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        base = formatter.lookup_by_type(Figure)
    except KeyError:  # pragma: no cover - set_matplotlib_formats registers one
        base = None
    formatter.for_type(Figure, lambda fig: png_with_alt(fig, base))


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


MIN_ANNOTATION_PT = 7.0
MAX_ANNOTATION_PT = 9.0


def _relative_luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour."""
    channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def text_colour_on(background) -> str:
    """Black or white, whichever has the higher WCAG contrast ratio on ``background``."""
    lum = _relative_luminance(to_rgb(background))
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def annotation_size(ax, shape: tuple[int, int], longest: int) -> float:
    """A font size (points) at which ``longest`` characters fit a cell of an ``shape`` grid
    drawn in ``ax``: at most 9 pt, never below 7 pt (a grid too dense for 7 pt needs a bigger
    figure or fewer decimals, not smaller text)."""
    box = ax.get_window_extent().transformed(ax.figure.dpi_scale_trans.inverted())
    cell_w = 72 * box.width / max(shape[1], 1)
    cell_h = 72 * box.height / max(shape[0], 1)
    size = min(MAX_ANNOTATION_PT, 0.85 * cell_w / (0.62 * max(longest, 1)), 0.6 * cell_h)
    return float(max(MIN_ANNOTATION_PT, size))


def _legible_annotations(ax, table: np.ndarray, fmt: str) -> None:
    """Each cell's number at one size that fits (:func:`annotation_size`), in black or white by
    the contrast with its cell's colour."""
    if not ax.texts or not ax.collections:
        return
    finite = table[np.isfinite(table)]
    longest = max((len(format(v, fmt)) for v in finite), default=1)
    size = annotation_size(ax, table.shape, longest)
    mesh = ax.collections[0]
    mesh.update_scalarmappable()
    faces = mesh.get_facecolors()
    cells = [(i, j) for i in range(table.shape[0]) for j in range(table.shape[1])]
    colours = dict(zip(cells, faces)) if len(faces) == len(cells) else {}
    for text in ax.texts:
        x, y = text.get_position()
        face = colours.get((int(y), int(x)))
        text.set_fontsize(size)
        if face is not None:
            text.set_color(text_colour_on(face))


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
    cmap: str = SEQUENTIAL_CMAP,
    ax=None,
    annot: bool = True,
    cbar_label: str | None = None,
):
    """Annotated heatmap; NaN cells (empty groups) are left blank. The numbers are at least 7 pt,
    in black or white by contrast with their cell."""
    table = np.asarray(table, dtype=float)
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
        annot_kws={"fontsize": MIN_ANNOTATION_PT},
        cbar_kws={"label": cbar_label} if cbar_label else None,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if own:
        ax.figure.tight_layout()
    if annot:
        _legible_annotations(ax, table, fmt)
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


def on_contrasting_ground(strokes: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Grey digits (N, 1, H, W) or (N, H, W) in [0, 1] drawn in their colour vectors (N, 3) on a
    black or white ground, whichever contrasts more with the colour (a dark class colour on black
    or a light one on white would vanish); (N, 3, H, W) in [0, 1]. For display only."""
    x = strokes.detach().float().cpu()
    x = x if x.dim() == 4 else x[:, None]
    c = colours.detach().float().cpu().clamp(0, 1)
    ground = torch.tensor(
        [0.0 if text_colour_on(tuple(col.tolist())) == "black" else 1.0 for col in c]
    )[:, None, None, None]
    return (ground * (1 - x) + c[:, :, None, None] * x).clamp(0, 1)


def coloured_digit_rows(
    rows: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    *,
    suptitle: str,
    n: int = 16,
):
    """Samples of two-input coloured-MNIST sets: one strip per (title, grey images, colour
    vectors) row, each digit drawn in its colour on the black or white ground that shows it
    (:func:`on_contrasting_ground`), tiles separated by a thin grey gap. Returns the figure."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(BOOK_WIDTH, 0.95 * len(rows) + 0.5))
    axes = np.atleast_1d(axes)
    gap = 2
    for ax, (title, strokes, colours) in zip(axes, rows):
        tiles = on_contrasting_ground(strokes[:n], colours[:n])
        k, _, h, w = tiles.shape
        strip = torch.full((3, h, k * (w + gap) - gap), 0.5)
        for i in range(k):
            strip[:, :, i * (w + gap) : i * (w + gap) + w] = tiles[i]
        ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return describe(
        fig,
        f"{suptitle}. "
        + " ".join(f"Row {i + 1}: {t}." for i, (t, _, _) in enumerate(rows))
        + " Each digit is drawn in its colour, on black or white for contrast.",
    )
