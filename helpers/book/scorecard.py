"""The reproduction scorecard (chapter 07): the reference works' headline numbers next to what this
book measured at the quick and full profiles, read from the chapters' run records.

A record is ``book/results/<chapter>.json`` (quick) or ``book/results/full/<chapter>.json`` (full),
as written by :meth:`helpers.book.chapter.ChapterRun.finish`. :func:`load_records` checks each one
and names the file at fault; :func:`scorecard` builds the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.book.layout import MAIN_PROFILE, profile_folder
from helpers.cache import REPO_ROOT

RESULTS = REPO_ROOT / "book" / "results"
PROFILES = (MAIN_PROFILE, "full")  # the profiles the book publishes; smoke records are never read
RECORD_KEYS = {
    "chapter": str,
    "profile": str,
    "device": str,
    "seeds": list,
    "wall_time_s": (int, float),
    "git_commit": str,
    "finished_utc": str,
    "metrics": dict,
}
SELF = "07_scorecard"


class RecordError(ValueError):
    """A run record that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Headline:
    """One number a reference work reports, and where this book's counterpart is in a record."""

    chapter: str
    name: str
    reference: float  # a fraction (0.9858 for 98.58 %)
    source: str  # table or file of the reference work
    cite: str  # BibTeX key in book/references.bib
    path: tuple[str, ...] | None  # keys into the record's metrics; None: not measured by the book
    tolerance: float = 0.02  # |book - reference| within this counts as reproduced
    substitute: str | None = None  # why the book's number is not a reproduction, when it is not


REBIAS_TABLE_1 = {  # Bahng et al. 2020, Table 1: unbiased accuracy (%) on Biased MNIST
    "Vanilla": (10.4, 33.4, 72.1, 89.1),
    "Biased": (10.0, 10.0, 10.0, 10.0),
    "RUBi": (13.7, 43.0, 90.4, 93.6),
    "LearnedMixin+H": (12.1, 50.2, 78.2, 88.3),
    "ReBias": (22.7, 64.2, 76.0, 88.1),
}
REBIAS_RHOS = ("0.999", "0.997", "0.995", "0.99")
OFFLINE_WATERBIRDS = (
    "Waterbirds cannot be fetched offline: the book's number is on the MNIST Waterbirds-like "
    "substitute, not on Waterbirds"
)

HEADLINES: tuple[Headline, ...] = (
    Headline(
        "02_fisher_regularization",
        "Fisher regulariser, coloured test",
        0.9858,
        "BiasMitigation README",
        "biasmitigation_repo",
        ("regularised", "colored_test_acc"),
    ),
    Headline(
        "02_fisher_regularization",
        "Fisher regulariser, grey test",
        0.9850,
        "BiasMitigation README",
        "biasmitigation_repo",
        ("regularised", "gray_test_acc"),
    ),
    Headline(
        "03_background_pairing",
        "paired training, pool-colour (basic) copies",
        0.98,
        "MNIST-synthetic-experiments README (≈)",
        "mnist_synthetic_repo",
        ("paired_basic_acc",),
        tolerance=0.03,
    ),
    Headline(
        "03_background_pairing",
        "paired training, noise copies",
        0.85,
        "MNIST-synthetic-experiments README (≈)",
        "mnist_synthetic_repo",
        ("paired_noise_acc",),
        tolerance=0.03,
    ),
    Headline(
        "04_masktune",
        "MaskTune paper: ERM on the biased test",
        0.1859,
        "MaskTune paper (as quoted by the mmalejky/masktune README)",
        "taghanaki2022masktune",
        ("erm_biased_acc",),
    ),
    Headline(
        "04_masktune",
        "re-implementation VM, MaskTune top-k 0.1, raw test",
        0.9828,
        "vmazashvili/Neural-Networks notebook",
        "masktune_vm_repo",
        ("sweep", "top_k", "0.1", "raw_acc"),
    ),
    Headline(
        "04_masktune",
        "re-implementation VM, MaskTune top-k 0.1, biased test",
        0.9229,
        "vmazashvili/Neural-Networks notebook",
        "masktune_vm_repo",
        ("sweep", "top_k", "0.1", "biased_acc"),
    ),
    *(
        Headline(
            "05_rebias",
            f"{method}, unbiased test, ρ = {rho}",
            value / 100,
            "ReBias paper, Table 1",
            "bahng2020rebias",
            ("table", method, rho, "mean"),
        )
        for method, values in REBIAS_TABLE_1.items()
        for rho, value in zip(REBIAS_RHOS, values)
    ),
    Headline(
        "06_caml",
        "CAML, Waterbirds worst group",
        0.8029,
        "CAML repository README (ResNet-18)",
        "caml_repo",
        ("table", "CAML", "worst"),
        tolerance=0.03,
        substitute=OFFLINE_WATERBIRDS,
    ),
    Headline(
        "06_caml",
        "CAML, Waterbirds average",
        0.8456,
        "CAML repository README (ResNet-18)",
        "caml_repo",
        ("table", "CAML", "mean_of_groups"),
        tolerance=0.03,
        substitute=OFFLINE_WATERBIRDS,
    ),
    Headline(
        "06_caml",
        "CAML, CelebA worst group",
        0.8161,
        "CAML repository README (ResNet-18)",
        "caml_repo",
        None,
        substitute="CelebA cannot be fetched offline and the book has no CelebA substitute",
    ),
    Headline(
        "06_caml",
        "CAML, CelebA average",
        0.8604,
        "CAML repository README (ResNet-18)",
        "caml_repo",
        None,
        substitute="CelebA cannot be fetched offline and the book has no CelebA substitute",
    ),
)


def load_record(path: Path) -> dict[str, Any]:
    """One run record, checked: JSON, the record keys with their types, the chapter its file
    names."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a readable JSON run record ({exc})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a run record is a JSON object, got {type(record).__name__}")
    for key, kind in RECORD_KEYS.items():
        if key not in record:
            raise RecordError(f"{path}: the run record has no {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise RecordError(f"{path}: {key!r} has the wrong type ({type(record[key]).__name__})")
    if record["chapter"] != Path(path).stem:
        raise RecordError(f"{path}: the record is of chapter {record['chapter']!r}")
    _check_finite(record["metrics"], path, "metrics")
    return record


def _check_finite(value: Any, path: Path, key: str) -> None:
    """A NaN or infinity in a record (JSON admits them; the chapters write null) is an error naming
    the file and the key, not a number to show as missing."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"{path}: {key} is {value!r}, not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, path, f"{key}[{i}]")


def record_files(results: Path = RESULTS) -> list[Path]:
    """Every published run record except the scorecard's own: quick, then full."""
    return [path for profile, path in _published(results)]


def _published(results: Path) -> list[tuple[str, Path]]:
    """(profile, record file) for every published record except the scorecard's own."""
    return [
        (profile, path)
        for profile in PROFILES
        for path in sorted(profile_folder(results, profile).glob("[0-9][0-9]_*.json"))
        if path.stem != SELF
    ]


def load_records(results: Path = RESULTS) -> dict[str, dict[str, dict[str, Any]]]:
    """``{profile: {chapter: record}}`` for the quick and full records under ``results``; a record
    whose profile does not match its folder is an error."""
    records: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in PROFILES}
    for expected, path in _published(results):
        record = load_record(path)
        if record["profile"] != expected:
            raise RecordError(f"{path}: profile {record['profile']!r} in the {expected} folder")
        records[expected][record["chapter"]] = record
    return records


def lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The number at ``path`` in ``metrics``; None where the run did not measure it."""
    value: Any = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def provenance(record: Mapping[str, Any]) -> str:
    return (
        f"{record['profile']}, {record['device']}, seeds {record['seeds']}, "
        f"{record['wall_time_s']:.0f} s, {record['git_commit']}, {record['finished_utc'][:10]}"
    )


STATUSES = (
    "reproduced at full scale",
    "not reproduced at full scale",
    "matches at quick scale",
    "differs at quick scale",
    "not measured yet",
    "cannot be measured offline",
)


def verdict(h: Headline, quick: float | None, full: float | None, real_data: bool) -> str:
    """One of :data:`STATUSES`."""
    if h.substitute and not real_data:
        return "cannot be measured offline"
    if full is not None:
        close = abs(full - h.reference) <= h.tolerance
        return "reproduced at full scale" if close else "not reproduced at full scale"
    if quick is None:
        return "not measured yet"
    close = abs(quick - h.reference) <= h.tolerance
    return "matches at quick scale" if close else "differs at quick scale"


# Why a chapter has no full-profile record yet, where the reason is not just that nobody ran it
# (read only while it has none; the sizes of each profile live in notebooks/profiles/).
NO_FULL_RUN = {
    "02_fisher_regularization": "its full profile needs a GPU (chapter 02 estimates the CPU time "
    "from its own epochs)",
    "05_rebias": "its full profile needs a GPU (chapter 05 estimates the CPU time from its timed "
    "search runs)",
}


def _no_full_run(chapter: str) -> str:
    return NO_FULL_RUN.get(chapter, "its full profile has not been run yet")


def reason(h: Headline, status: str) -> str:
    """Why a number is not (yet) reproduced, in words; empty for a reproduced one."""
    if status == "cannot be measured offline":
        return h.substitute or ""
    if status == "not reproduced at full scale":
        return "full-scale run off by more than the tolerance; see the chapter's discussion"
    if status == "matches at quick scale":
        return f"quick setting only (a named deviation); {_no_full_run(h.chapter)}"
    if status == "differs at quick scale":
        return (
            f"quick setting (a named deviation from the paper's scale); {_no_full_run(h.chapter)}"
        )
    if status == "not measured yet":
        return f"the quick profile does not train this cell; {_no_full_run(h.chapter)}"
    return ""


def scorecard(records: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per headline: reference, quick, full, deltas (book - reference), verdict and the
    provenance of the runs used."""
    rows = []
    for h in HEADLINES:
        values, sources = {}, {}
        for profile in PROFILES:
            record = records.get(profile, {}).get(h.chapter)
            value = lookup(record["metrics"], h.path) if record and h.path else None
            values[profile] = value
            sources[profile] = provenance(record) if record and value is not None else ""
        # the data the chapter ran on: the full run's when there is one
        runs = (records.get(p, {}).get(h.chapter) for p in PROFILES[::-1])
        newest = next((r for r in runs if r), {})
        real_data = newest.get("metrics", {}).get("data_source", "offline-mnist") != "offline-mnist"
        rows.append(
            {
                "chapter": h.chapter,
                "headline": h.name,
                "reference": h.reference,
                "source": h.source,
                "cite": h.cite,
                "quick": values["quick"],
                "full": values["full"],
                "delta_quick": None if values["quick"] is None else values["quick"] - h.reference,
                "delta_full": None if values["full"] is None else values["full"] - h.reference,
                "status": (status := verdict(h, values["quick"], values["full"], real_data)),
                "tolerance": h.tolerance,
                "why": reason(h, status),
                "provenance_quick": sources["quick"],
                "provenance_full": sources["full"],
            }
        )
    return rows
