"""Small, separable split-stage outputs (splits/, labels.json, slices.json) for the train,
evaluate and report tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

LABELS = ["bug", "feature", "question"]
WORDS = {
    "bug": "crash error broken fails exception traceback wrong segfault",
    "feature": "add support request would like option new enhancement",
    "question": "how why what help wondering possible explain docs",
}


def _row(i: int, labels: list[str], rng: random.Random, split: str) -> dict:
    words = []
    for lab in labels:
        words += rng.sample(WORDS[lab].split(), 3)
    words += [f"w{rng.randint(0, 50)}" for _ in range(3)]
    rng.shuffle(words)
    return {"id": f"{split}-{i}", "text": " ".join(words), "labels": labels, "split": split}


def make_splits_dir(
    directory: Path,
    multi_label: bool = True,
    n_train: int = 48,
    n_valid: int = 30,
    n_test: int = 30,
    n_unlabeled: int = 20,
    slice_sizes: tuple[int, ...] = (8, 16),
    seed: int = 0,
    drop_label_from_small_slices: str | None = None,
    unlabeled_label: str | None = None,
) -> Path:
    """Write a split stage directory with separable texts and nested slices.

    ``drop_label_from_small_slices``: keep every row of that label out of the slices
    smaller than "all" (a slice with a label that never occurs).
    ``unlabeled_label``: the unlabeled rows are written from that label's words only (a pool
    whose label frequencies differ from the labelled splits').
    """
    import datasets

    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def labels_for(i: int) -> list[str]:
        first = LABELS[i % len(LABELS)]
        if multi_label and i % 5 == 0:
            return sorted({first, LABELS[(i + 1) % len(LABELS)]})
        return [first]

    parts = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        parts[split] = [_row(i, labels_for(i), rng, split) for i in range(n)]
    parts["unlabeled"] = [
        {
            **_row(i, [unlabeled_label] if unlabeled_label else labels_for(i), rng, "unlabeled"),
            "labels": [],
        }
        for i in range(n_unlabeled)
    ]

    train_ids = [r["id"] for r in parts["train"]]
    eligible = [r["id"] for r in parts["train"] if drop_label_from_small_slices not in r["labels"]]
    slices: dict[str, list[str]] = {}
    for size in slice_sizes:
        slices[str(size)] = eligible[:size]
    slices["all"] = train_ids
    min_slice = {}
    for name in reversed(list(slices)):
        for i in slices[name]:
            min_slice[i] = name
    for r in parts["train"]:
        r["min_slice"] = min_slice[r["id"]]

    dd = {}
    for split, rows in parts.items():
        features = CANONICAL_FEATURES.copy()
        if split == "train":
            features["min_slice"] = datasets.Value("string")
        dd[split] = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict(dd).save_to_disk(str(directory / "splits"))
    (directory / "slices.json").write_text(json.dumps(slices))
    write_label_info(directory, LABELS, multi_label)
    (directory / "manifest.json").write_text(json.dumps({"stage": "split"}))
    return directory


def splits_ref(directory: Path):
    from label_pipeline.store import StageRef

    return StageRef(stage="split", fingerprint=f"test-{Path(directory).name}", path=str(directory))


def labelled_rows(
    split: str, n: int, multi_label: bool = True, seed: int = 0
) -> tuple[list[str], list[list[str]], list[str]]:
    """``n`` separable rows of ``split`` as plain lists: texts, label lists, ids (the rows
    :func:`make_splits_dir` writes, for tests that call a stage's compute part directly)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = LABELS[i % len(LABELS)]
        labels = (
            sorted({first, LABELS[(i + 1) % len(LABELS)]})
            if multi_label and i % 5 == 0
            else [first]
        )
        rows.append(_row(i, labels, rng, split))
    return [r["text"] for r in rows], [r["labels"] for r in rows], [r["id"] for r in rows]
