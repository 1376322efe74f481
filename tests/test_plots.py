"""The book's figure helpers (helpers/plots.py): one colour-blind-safe palette, legible heatmap
numbers, coloured digits that stay visible, and alt text on every inline figure."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from helpers import plots  # noqa: E402


def test_the_book_palette_is_the_colour_cycle_and_methods_use_it():
    plots.use_book_style()
    cycle = [to_rgb(c) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    assert cycle[:10] == [tuple(c) for c in plots.PALETTE]
    assert all(tuple(c) in set(map(tuple, plots.PALETTE)) for c in plots.METHOD_COLOURS.values())


def test_alt_text_set_or_composed_from_the_titles():
    fig, axes = plt.subplots(1, 2)
    axes[0].set_title("loss")
    axes[0].set_xlabel("epoch")
    axes[1].set_title("accuracy")
    fig.suptitle("Training curves")
    alt = plots.figure_alt(fig)
    assert alt.startswith("Figure: Training curves") and "loss" in alt and "accuracy" in alt
    assert "x: epoch" in alt
    plots.describe(fig, "Two panels:  loss falls,\n accuracy rises.")
    assert plots.figure_alt(fig) == "Two panels: loss falls, accuracy rises."
    with pytest.raises(ValueError):
        plots.describe(fig, " ")
    plt.close(fig)


def test_inline_figures_carry_their_alt_text_in_the_output_metadata():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        plots.use_book_style()
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.plot([0, 1], [0, 1])
        plots.describe(fig, "A rising line.")
        data, metadata = shell.display_formatter.format(fig)
        assert "image/png" in data
        png_meta = metadata["image/png"]
        assert png_meta["alt"] == "A rising line."
        assert png_meta["width"] > 0 and png_meta["height"] > 0  # retina: display size kept
        plt.close(fig)
    finally:
        InteractiveShell.clear_instance()


def test_heatmap_numbers_are_legible_on_every_cell():
    table = np.array([[0.0, 0.5, 1.0], [0.99, np.nan, 0.02]])
    fig = plots.heatmap(table, xlabel="x", ylabel="y", title="t")
    ax = fig.axes[0]
    assert ax.texts and all(t.get_fontsize() >= 7 for t in ax.texts)
    faces = ax.collections[0].get_facecolors()
    for text in ax.texts:
        x, y = text.get_position()
        face = faces[int(y) * table.shape[1] + int(x)]
        lum = plots._relative_luminance(face)
        ink = plots._relative_luminance(to_rgb(text.get_color()))
        ratio = (max(lum, ink) + 0.05) / (min(lum, ink) + 0.05)
        assert ratio >= 4.5, (text.get_text(), face, text.get_color())
    plt.close(fig)
    dense = plots.confusion_heatmap(np.eye(10) * 50 + 1, title="c")
    assert all(t.get_fontsize() >= 7 for t in dense.axes[0].texts)
    plt.close(dense)


def test_coloured_digits_stay_visible_whatever_their_colour():
    strokes = torch.zeros(3, 1, 28, 28)
    strokes[:, :, 10:18, 10:18] = 1.0
    colours = torch.tensor([[0.0, 0.05, 0.2], [1.0, 1.0, 0.9], [0.5, 0.5, 0.5]])
    tiles = plots.on_contrasting_ground(strokes, colours)
    assert tiles.shape == (3, 3, 28, 28)
    for tile, colour in zip(tiles, colours):
        ground, ink = tile[:, 0, 0], tile[:, 14, 14]
        assert torch.allclose(ink, colour)
        lum = [plots._relative_luminance(tuple(v.tolist())) for v in (ground, ink)]
        assert (max(lum) + 0.05) / (min(lum) + 0.05) >= 2.5  # the digit stands out
    fig = plots.coloured_digit_rows(
        [("train", strokes, colours), ("test", strokes, colours)], suptitle="Samples"
    )
    assert len(fig.axes) == 2 and plots.figure_alt(fig).startswith("Samples.")
    plt.close(fig)
