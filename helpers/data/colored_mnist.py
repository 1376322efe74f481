"""Two-modality Colored MNIST (the SMART-Lab BiasMitigation setting) and its late-fusion LeNet.

Each sample is a pair of inputs: the plain grey MNIST image (1×28×28, pixels in [0, 1], never
coloured) and a separate colour vector c ∈ [0, 1]³. In training the colour is tied to the label:
``c_i = clip(C[y_i] + δ_i, 0, 1)``, with one random colour ``C[y] ~ U[0, 1]³`` per class and
per-sample noise ``δ_i ~ N(0, std²·I)`` drawn once. The evaluation sets, as the reference builds
them plus one it lacks:

* ``val_colored``, ``test_colored``: the *training* colour table with fresh noise: in-distribution,
  still 100 % biased;
* ``val_gray``, ``test_gray``: every colour vector is the constant grey (1, 1, 1): the colour cue is
  removed;
* ``test_conflicting`` (added by the book): each image gets the colour of another class y' ≠ y,
  drawn uniformly from the other nine; ``bias`` holds y'.

The reference draws the colour table, the 48k/12k split and the noise without seeds; here each has
its own seed derived from one ``seed`` (see :func:`build_colored_mnist`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from helpers import metrics as M
from helpers.data.mnist import load_mnist
from helpers.models import eval_mode
from helpers.seed import derive_seed, generator
from helpers.tensordata import TensorData, random_subset

NUM_CLASSES = 10
TRAIN_SPLIT = 48_000  # of the official 60k training images; the other 12k are the validation set
GRAY_COLOUR = (1.0, 1.0, 1.0)


PALETTES = ("uniform", "sphere")


def colour_table(seed: int, palette: str = "uniform") -> torch.Tensor:
    """One colour per class, shape (10, 3).

    ``"uniform"``: i.i.d. Uniform[0, 1]³, the reference's ``colors=[0, 1]`` (two classes can get
    near-identical colours). ``"sphere"``: ten colours spread evenly (a Fibonacci lattice) on the
    sphere of radius 0.5 inscribed in the colour cube, randomly rotated and assigned to the
    classes, so that no two are closer than ≈ 0.49."""
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
    gen = generator(seed)
    if palette == "uniform":
        return torch.rand(NUM_CLASSES, 3, generator=gen)
    k = torch.arange(NUM_CLASSES, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / NUM_CLASSES
    phi = torch.pi * (1 + 5**0.5) * k
    r = (1 - z**2).sqrt()
    points = torch.stack([r * phi.cos(), r * phi.sin(), z], dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    points = points @ rotation.T
    return (0.5 + 0.5 * points[torch.randperm(NUM_CLASSES, generator=gen)]).float()


def colour_vectors(
    colour_labels: torch.Tensor, table: torch.Tensor, std: float, seed: int
) -> torch.Tensor:
    """``clip(table[colour_labels] + δ, 0, 1)`` with δ ~ N(0, std²) drawn once per sample: shape (N,
    3)."""
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    noise = torch.randn(len(colour_labels), 3, generator=generator(seed)) * std
    return (table[colour_labels] + noise).clamp(0.0, 1.0)


def other_class(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A label y' ≠ y per sample, uniform over the other nine classes."""
    shift = torch.randint(1, NUM_CLASSES, (len(labels),), generator=generator(seed))
    return (labels + shift) % NUM_CLASSES


def min_colour_distance(table: torch.Tensor) -> tuple[float, int, int]:
    """Smallest Euclidean distance between two class colours, and the two classes: near-twins weaken
    the conflicting test (a 'wrong' colour that looks like the right one)."""
    d = torch.cdist(table, table)
    d.fill_diagonal_(float("inf"))
    flat = int(d.argmin())
    i, j = divmod(flat, NUM_CLASSES)
    return float(d[i, j]), min(i, j), max(i, j)


def _images(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, 28, 28) in [0, 1]: ToTensor() and nothing else, as the
    reference."""
    return x_uint8.to(torch.float32).div(255.0).unsqueeze(1)


def _pair(
    x: torch.Tensor, y: torch.Tensor, colour: torch.Tensor, bias: torch.Tensor | None
) -> TensorData:
    return TensorData(x, y.clone(), bias, {"colour": colour})


@dataclass
class ColoredMNIST:
    """The six sets (``data["train"]``, …) and the class colour table (10, 3) they were built
    with."""

    sets: dict[str, TensorData]
    table: torch.Tensor

    def __getitem__(self, name: str) -> TensorData:
        return self.sets[name]


def build_colored_mnist(
    *,
    seed: int,
    std: float = 0.1,
    palette: str = "uniform",
    scale: float = 1.0,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    root=None,
) -> ColoredMNIST:
    """Build ``train``, ``val_colored``, ``val_gray``, ``test_colored``, ``test_gray``,
    ``test_conflicting``.

    Each is a TensorData with images ``x``, labels ``y``, ``extras["colour"]`` and ``bias`` = the
    class whose colour the sample carries (None on the grey sets). ``train_size`` / ``val_size`` /
    ``test_size`` take seeded random subsets of the 48k / 12k / 10k sets for fast profiles;
    ``palette`` chooses the class colours (:func:`colour_table`). ``scale`` multiplies the class
    colour vectors (the reference: 1): the amplitude of the colour code, which sets how large the
    colour's contribution ``W_c·c`` to the logits is for a given weight. The grey of the grey sets
    stays the reference's (1, 1, 1) at every scale: scaled with the code it would become an extreme
    colour far outside the training colours, and the grey sets would measure the network's answer
    to that colour instead of its answer without a colour cue.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    mnist = load_mnist(root)
    table = colour_table(derive_seed(seed, "colours"), palette)
    perm = torch.randperm(len(mnist["train_y"]), generator=generator(seed, "split"))
    parts = {"train": perm[:TRAIN_SPLIT], "val": perm[TRAIN_SPLIT:]}
    for name, size in (("train", train_size), ("val", val_size)):
        keep = random_subset(
            len(parts[name]), size, derive_seed(seed, name, "subset"), f"{name}_size"
        )
        parts[name] = parts[name][keep]
    te_keep = random_subset(
        len(mnist["test_y"]), test_size, derive_seed(seed, "test", "subset"), "test_size"
    )
    te_x, te_y = mnist["test_x"][te_keep], mnist["test_y"][te_keep]

    tr_x, tr_y = _images(mnist["train_x"][parts["train"]]), mnist["train_y"][parts["train"]]
    va_x, va_y = _images(mnist["train_x"][parts["val"]]), mnist["train_y"][parts["val"]]
    te_x = _images(te_x)
    gray = lambda n: torch.tensor(GRAY_COLOUR).expand(n, 3).clone()  # noqa: E731 - std 0, never scaled
    y_other = other_class(te_y, derive_seed(seed, "conflict_labels"))

    def colours(labels: torch.Tensor, name: str) -> torch.Tensor:
        return scale * colour_vectors(labels, table, std, derive_seed(seed, name))

    sets = {
        "train": _pair(
            tr_x,
            tr_y,
            colours(tr_y, "train"),
            tr_y.clone(),
        ),
        "val_colored": _pair(
            va_x,
            va_y,
            colours(va_y, "val_colored"),
            va_y.clone(),
        ),
        "val_gray": _pair(va_x, va_y, gray(len(va_y)), None),
        "test_colored": _pair(
            te_x,
            te_y,
            colours(te_y, "test_colored"),
            te_y.clone(),
        ),
        "test_gray": _pair(te_x, te_y, gray(len(te_y)), None),
        "test_conflicting": _pair(
            te_x,
            te_y,
            colours(y_other, "test_conflicting"),
            y_other,
        ),
    }
    return ColoredMNIST(sets, table)


def colour_only_accuracy(
    sets: dict[str, TensorData], hidden: int | None = None, seed: int = 0
) -> float:
    """Coloured-test accuracy of a classifier that sees only the colour vector: a multinomial
    logistic regression (what a linear read-out ``W_c·c`` alone can do) or, with ``hidden``, a
    one-hidden-layer MLP. How much of the label the colour code carries, whatever a model makes
    of it."""
    # scikit-learn only here: building the data sets does not need it
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if hidden is None:
        clf = LogisticRegression(C=1e4, max_iter=5000)
    else:
        clf = MLPClassifier((hidden,), max_iter=3000, tol=1e-5, random_state=seed)
    train, test = sets["train"], sets["test_colored"]
    clf.fit(train.extras["colour"].cpu().numpy(), train.y.cpu().numpy())
    return float(clf.score(test.extras["colour"].cpu().numpy(), test.y.cpu().numpy()))


def coloured_digits(data: TensorData) -> torch.Tensor:
    """For display only (the reference's ``visualize_samples``): grey digit × colour vector, (N, 3,
    28, 28). The model never sees this product."""
    return data.x * data.extras["colour"][:, :, None, None]


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 2048) -> torch.Tensor:
    """Logits of a two-input model on every sample of ``data`` (eval mode; the previous mode is
    restored)."""
    with eval_mode(model):
        outs = [
            model(data.x[i : i + batch_size], data.extras["colour"][i : i + batch_size]).float()
            for i in range(0, len(data), batch_size)
        ]
    return torch.cat(outs)


def accuracy(model: nn.Module, data: TensorData) -> float:
    """Plain accuracy: fraction of ``data`` classified correctly."""
    return M.accuracy(data.y, predict(model, data).argmax(1))


__all__ = [
    "ColoredMNIST",
    "build_colored_mnist",
    "colour_only_accuracy",
    "colour_table",
    "PALETTES",
    "colour_vectors",
    "other_class",
    "min_colour_distance",
    "coloured_digits",
    "predict",
    "accuracy",
    "GRAY_COLOUR",
]
