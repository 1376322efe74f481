"""Turn a Waterbirds-style image folder into a feature folder (ResNet-18, 512-d pooled features).

Usage::

    python -m helpers.data.extract_features IMAGES_DIR OUT_DIR [--weights imagenet|random]
        [--device auto] [--image-size 224] [--batch-size 64] [--seed 0] [--overwrite]

``IMAGES_DIR`` holds the images and a ``metadata.csv`` in the Waterbirds layout, with at least the
columns ``img_filename`` (path relative to ``IMAGES_DIR``), ``y`` (target 0/1), ``place`` (bias
attribute, binarised as ``place > 0``) and ``split`` (0 = train, 1 = val, 2 = test). The Waterbirds
release (``waterbird_complete95_forest2water2``) ships exactly this file; for CelebA write one with
``y`` = Blond_Hair and ``place`` = Male.

Each image is resized to ``image-size``² and normalised with the ImageNet mean and standard
deviation, then passed through torchvision's ResNet-18 with its final ``fc`` layer removed, giving
the 512-d globally average-pooled features. ``--weights imagenet`` (default) uses the IMAGENET1K_V1
weights, which torchvision downloads once into its hub cache; ``--weights random`` uses a seeded
random initialisation (no download; for tests and offline trials, the features are then not
meaningful). The val split is made group-balanced by subsampling every (y, place) group to the
smallest group's size (seeded by ``--seed``); train and test are kept whole. The result is written
with :func:`helpers.feature_folder.write_feature_folder` (``{split}_feats.npy`` float32 (N, 512),
``{split}_targets.npy`` and ``{split}_bias.npy`` int64 (N,), ``checksums.json``, ``meta.json``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.cache import file_digest
from helpers.data.feature_folder import (
    FeatureFolderError,
    FeatureSplit,
    balance_groups,
    check_replaceable,
    describe,
    write_feature_folder,
)
from helpers.device import pick_device

SPLIT_CODES = {0: "train", 1: "val", 2: "test"}
REQUIRED_COLUMNS = ("img_filename", "y", "place", "split")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V1 file; its name carries its SHA-256 prefix
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"
RESNET18_SHA256_PREFIX = "f37072fd"


class ExtractionError(ValueError):
    """Bad input to the extractor (metadata, images, weights); the message names the file or
    option."""


def read_metadata(images_dir: Path) -> dict[str, dict[str, list]]:
    """``{split: {"files": [...], "y": [...], "place": [...]}}`` from
    ``images_dir/metadata.csv``."""
    path = images_dir / "metadata.csv"
    if not path.is_file():
        raise ExtractionError(f"{path} is missing (expected columns {', '.join(REQUIRED_COLUMNS)})")
    out = {s: {"files": [], "y": [], "place": []} for s in SPLIT_CODES.values()}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ExtractionError(f"{path} lacks the columns {missing} (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                split, y, place = int(row["split"]), int(float(row["y"])), int(float(row["place"]))
            except ValueError as exc:
                raise ExtractionError(
                    f"{path} line {line}: split, y and place must be integers ({exc})"
                ) from exc
            if split not in SPLIT_CODES:
                raise ExtractionError(f"{path} line {line}: split must be 0, 1 or 2, got {split}")
            if y not in (0, 1):
                raise ExtractionError(f"{path} line {line}: y must be 0 or 1, got {y}")
            d = out[SPLIT_CODES[split]]
            d["files"].append(row["img_filename"])
            d["y"].append(y)
            d["place"].append(int(place > 0))
    for split, d in out.items():
        if not d["files"]:
            raise ExtractionError(f"{path}: no rows for the {split} split")
    return out


def imagenet_state_dict() -> dict:
    """The ResNet-18 IMAGENET1K_V1 state dict from torch's hub cache (downloaded once), verified,
    without pickle code.

    torchvision itself unpickles the cached file in full and checks its hash only while downloading,
    so a file put there by hand could run code. Here the file's SHA-256 must start with the prefix
    in its name (torchvision's own check, ``check_hash``: 8 hex digits; it catches a wrong or
    damaged file, not a deliberately forged one) and it is read with ``weights_only=True``, which
    refuses any pickled object other than tensors and plain containers.
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                RESNET18_URL, str(path), hash_prefix=RESNET18_SHA256_PREFIX, progress=False
            )
        except Exception as exc:  # noqa: BLE001 - no network, no cache: say what to do
            raise ExtractionError(
                "--weights imagenet: could not download the ResNet-18 IMAGENET1K_V1 weights "
                f"({type(exc).__name__}: {exc}). Download {RESNET18_URL} into {path.parent}/ or "
                "use --weights random"
            ) from exc
    digest = file_digest(path)
    if not digest.startswith(RESNET18_SHA256_PREFIX):
        raise ExtractionError(
            f"{path}: SHA-256 {digest} does not start with {RESNET18_SHA256_PREFIX}, so it is not "
            "the official file; delete it (it is downloaded again) or use --weights random"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle or an unreadable file: never fall back to full pickle
        raise ExtractionError(
            f"{path} cannot be loaded as plain weights ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); delete it "
            "(it is downloaded again) or use --weights random"
        ) from exc


def build_encoder(weights: str, seed: int, device) -> torch.nn.Module:
    """torchvision ResNet-18 with ``fc`` replaced by the identity: images → 512-d pooled
    features."""
    import torchvision

    if weights == "imagenet":
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(imagenet_state_dict())
    elif weights == "random":
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None)
    else:
        raise ExtractionError(f"--weights must be 'imagenet' or 'random', got {weights!r}")
    model.fc = torch.nn.Identity()
    return model.eval().to(device)


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """RGB image → (3, image_size, image_size) float, ImageNet-normalised."""
    from PIL import Image

    if not path.is_file():
        raise ExtractionError(f"{path} (listed in metadata.csv) is missing")
    with Image.open(path) as img:
        img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    images_dir: Path,
    files: list[str],
    image_size: int,
    batch_size: int,
    device,
    desc: str,
) -> torch.Tensor:
    feats = []
    for start in tqdm(range(0, len(files), batch_size), desc=desc, unit="batch"):
        x = torch.stack(
            [load_image(images_dir / f, image_size) for f in files[start : start + batch_size]]
        )
        feats.append(model(x.to(device)).float().cpu())
    return torch.cat(feats)


def run(
    images_dir,
    out_dir,
    weights: str = "imagenet",
    device="auto",
    image_size: int = 224,
    batch_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Extract features for all three splits and write the feature folder; returns its path."""
    images_dir, out_dir = Path(images_dir).expanduser(), Path(out_dir).expanduser()
    if not images_dir.is_dir():
        raise ExtractionError(f"IMAGES_DIR {images_dir} is not a directory")
    if image_size < 32:
        raise ExtractionError(f"--image-size must be >= 32, got {image_size}")
    if batch_size < 1:
        raise ExtractionError(f"--batch-size must be >= 1, got {batch_size}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExtractionError(
            f"OUT_DIR {out_dir} exists and is not empty; pass --overwrite to replace it"
        )
    # before the long extraction: --overwrite replaces only a feature folder
    check_replaceable(out_dir)
    meta = read_metadata(images_dir)
    y_val = torch.tensor(meta["val"]["y"])
    b_val = torch.tensor(meta["val"]["place"])
    try:
        keep = balance_groups(y_val, b_val, seed).tolist()
    except ValueError as exc:
        raise ExtractionError(
            f"{images_dir / 'metadata.csv'}: the val split (split 1) {exc}"
        ) from exc
    meta["val"] = {k: [v[i] for i in keep] for k, v in meta["val"].items()}
    dev = pick_device(None if device in (None, "auto") else device)
    model = build_encoder(weights, seed, dev)
    splits = {}
    for split in ("train", "val", "test"):
        d = meta[split]
        feats = extract(
            model, images_dir, d["files"], image_size, batch_size, dev, desc=f"{split} features"
        )
        splits[split] = FeatureSplit(
            feats,
            torch.tensor(d["y"], dtype=torch.long),
            torch.tensor(d["place"], dtype=torch.long),
        )
    info = {
        "source": images_dir.name,
        "encoder": f"torchvision resnet18, fc removed, weights={weights}",
        "image_size": image_size,
        "balance_seed": seed,
        "feature_dim": splits["train"].dim,
        "group_counts": {s: splits[s].group_counts() for s in splits},
    }
    path = write_feature_folder(out_dir, splits, meta=info, overwrite=overwrite)
    print(describe(splits))
    print(f"feature folder written to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m helpers.data.extract_features", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "images_dir", help="folder with metadata.csv (img_filename,y,place,split) and the images"
    )
    p.add_argument("out_dir", help="feature folder to write")
    p.add_argument("--weights", choices=("imagenet", "random"), default="imagenet")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the val balancing and of --weights random"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    a = p.parse_args(argv)
    try:
        run(
            a.images_dir,
            a.out_dir,
            a.weights,
            a.device,
            a.image_size,
            a.batch_size,
            a.seed,
            a.overwrite,
        )
    except (ExtractionError, FeatureFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
