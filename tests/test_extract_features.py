import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.data.extract_features import ExtractionError, main, run
from helpers.data.feature_folder import load_feature_folder

# (split, y, place) -> count; val is unbalanced on purpose (smallest group: 2)
LAYOUT = {
    (0, 0, 0): 3,
    (0, 0, 1): 1,
    (0, 1, 0): 1,
    (0, 1, 1): 2,
    (1, 0, 0): 3,
    (1, 0, 1): 2,
    (1, 1, 0): 2,
    (1, 1, 1): 4,
    (2, 0, 0): 1,
    (2, 0, 1): 2,
    (2, 1, 0): 1,
    (2, 1, 1): 1,
}


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    rows = []
    for (split, y, place), n in LAYOUT.items():
        sub = root / f"{split}_{y}"
        sub.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            name = f"{split}_{y}/img_{place}_{k}.png"
            size = (40 + 3 * k, 36)  # images of different sizes are resized
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / name
            )
            rows.append(
                {
                    "img_id": len(rows),
                    "img_filename": name,
                    "y": y,
                    "split": split,
                    "place": place,
                    "place_filename": "x",
                }
            )
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_writes_exact_feature_folder(image_dir, tmp_path):
    out = tmp_path / "feats"
    assert (
        main(
            [
                str(image_dir),
                str(out),
                "--weights",
                "random",
                "--device",
                "cpu",
                "--image-size",
                "32",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["checksums.json", "meta.json"]
        + [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("feats", "targets", "bias")]
    )
    sizes = {"train": 7, "val": 8, "test": 5}
    for split, n in sizes.items():
        f = np.load(out / f"{split}_feats.npy")
        t = np.load(out / f"{split}_targets.npy")
        b = np.load(out / f"{split}_bias.npy")
        assert f.dtype == np.float32 and f.shape == (n, 512) and np.isfinite(f).all()
        assert t.dtype == np.int64 and t.shape == (n,)
        assert b.dtype == np.int64 and b.shape == (n,)
    splits = load_feature_folder(out)
    assert splits["val"].group_counts() == [2, 2, 2, 2]
    assert splits["train"].group_counts() == [3, 1, 1, 2]
    assert splits["test"].group_counts() == [1, 2, 1, 1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["feature_dim"] == 512 and "weights=random" in meta["encoder"]
    # features depend on the image, and the same seed gives the same features
    f = np.load(out / "train_feats.npy")
    assert np.abs(f[0] - f[1]).max() > 0
    out2 = tmp_path / "feats2"
    run(image_dir, out2, weights="random", device="cpu", image_size=32, batch_size=7)
    np.testing.assert_allclose(np.load(out2 / "train_feats.npy"), f, rtol=1e-4, atol=1e-5)


def test_errors_name_the_file(image_dir, tmp_path):
    (image_dir / "0_1" / "img_0_0.png").unlink()
    with pytest.raises(ExtractionError, match="img_0_0.png.*missing"):
        run(image_dir, tmp_path / "a", weights="random", device="cpu", image_size=32)
    text = (image_dir / "metadata.csv").read_text().replace("place,", "location,", 1)
    (image_dir / "metadata.csv").write_text(text)
    with pytest.raises(ExtractionError, match=r"metadata.csv lacks the columns \['place'\]"):
        run(image_dir, tmp_path / "a", weights="random", device="cpu", image_size=32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ExtractionError, match="not empty"):
        run(image_dir, tmp_path / "full", weights="random")
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "b"), "--weights", "random"]) == 2


def test_module_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.data.extract_features", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "--weights {imagenet,random}" in proc.stdout and "IMAGES_DIR" not in proc.stderr


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: proof that the weights file ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _hub_file(tmp_path, monkeypatch):
    from helpers.data import extract_features as ef

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / ef.RESNET18_FILE
    path.parent.mkdir(parents=True)
    return path


def test_hand_placed_imagenet_weights_with_wrong_hash_are_refused_unread(tmp_path, monkeypatch):
    """A file at torchvision's cache path is not trusted: its SHA-256 prefix is checked before it is
    opened."""
    import torch

    from helpers.data.extract_features import build_encoder

    path = _hub_file(tmp_path, monkeypatch)
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _RunsCode(str(marker))}, path)
    with pytest.raises(
        ExtractionError, match=rf"{path.name}: SHA-256 .* does not start with f37072fd"
    ):
        build_encoder("imagenet", 0, "cpu")
    assert not marker.exists(), "loading the weights file ran code"


def test_imagenet_weights_are_loaded_without_pickle_code(tmp_path, monkeypatch):
    """Even a file whose hash prefix matches is read with weights_only=True: a pickle with code is
    refused, a plain state dict is loaded into the encoder."""
    import torch
    import torchvision

    from helpers.cache import file_digest
    from helpers.data import extract_features as ef

    path = _hub_file(tmp_path, monkeypatch)
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _RunsCode(str(marker))}, path)
    monkeypatch.setattr(ef, "RESNET18_SHA256_PREFIX", file_digest(path)[:8])
    with pytest.raises(ExtractionError, match=rf"{path.name} cannot be loaded as plain weights"):
        ef.build_encoder("imagenet", 0, "cpu")
    assert not marker.exists(), "loading the weights file ran code"

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(ef, "RESNET18_SHA256_PREFIX", file_digest(path)[:8])
    encoder = ef.build_encoder("imagenet", 0, "cpu")
    assert torch.equal(encoder.conv1.weight, reference.conv1.weight)
    assert isinstance(encoder.fc, torch.nn.Identity)


def test_overwrite_leaves_an_unrelated_folder_alone(image_dir, tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "chapters").mkdir(parents=True)
    (out / "thesis.tex").write_text("\\chapter{One}\n")
    (out / "chapters" / "one.tex").write_text("text\n")
    assert (
        main([str(image_dir), str(out), "--weights", "random", "--image-size", "32", "--overwrite"])
        == 2
    )
    err = capsys.readouterr().err
    assert f"{out} is not a feature folder" in err and "nothing was deleted" in err
    assert (out / "thesis.tex").is_file() and (out / "chapters" / "one.tex").is_file()
