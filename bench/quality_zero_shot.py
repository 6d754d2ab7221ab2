"""Zero-shot quality: valid/test micro/macro-F1 (and accuracy for single-label) of the
``embedding`` backend (bundled all-MiniLM-L6-v2) with the rule the stage chooses on valid,
next to a Naive Bayes baseline (CountVectorizer + MultinomialNB) trained on the train split.

Datasets:
- the embedded default (GoEmotions Ekman sample, multi-label, 7 labels): its 600 labelled
  rows split at random (seed 0) into train 200 / valid 200 / test 200; NB also on a
  64-row slice of train;
- ../shared/datasets/emotion (single-label, 6 labels): 8 rows per class from train (48),
  500 valid rows from dev.csv, 2000 test rows from test.csv.

The zero-shot numbers come from running the stage itself (``run_zero_shot``) on a splits
directory built here.

    .venv/bin/python bench/quality_zero_shot.py [--emotion-dir DIR]

Writes bench/results/zero_shot_quality.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import DATASETS, write_results  # noqa: E402

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from label_pipeline.data import CANONICAL_FEATURES, label_matrix, write_label_info  # noqa: E402
from label_pipeline.store import StageRef, StageStore  # noqa: E402
from label_pipeline.zeroshot.selection import accuracy, f1_scores  # noqa: E402
from tasks.zero_shot import ZeroShotConfig, run_zero_shot  # noqa: E402

EMOTION_NAMES = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def _rows(split: str, items: list[tuple[str, list[str]]]) -> list[dict]:
    return [
        {"id": f"{split}-{i}", "text": t, "labels": labs, "split": split}
        for i, (t, labs) in enumerate(items)
    ]


def write_splits(
    root: Path, parts: dict[str, list[dict]], labels: list[str], multi: bool
) -> StageRef:
    import datasets

    dd = datasets.DatasetDict(
        {
            k: datasets.Dataset.from_dict(
                {c: [r[c] for r in v] for c in CANONICAL_FEATURES}, features=CANONICAL_FEATURES
            )
            for k, v in parts.items()
        }
    )
    dd.save_to_disk(str(root / "splits"), num_shards={k: 1 for k in dd})
    write_label_info(root, labels, multi)
    return StageRef(stage="split", fingerprint=root.name, path=str(root))


def goemotions_parts(seed: int = 0) -> tuple[dict[str, list[dict]], list[str]]:
    labelled = []
    with open(ROOT / "data" / "goemotions-ekman-sample.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            labs = [x for x in row["labels"].split(";") if x]
            if labs:
                labelled.append((row["text"], labs))
    labels = sorted({x for _, labs in labelled for x in labs})
    random.Random(seed).shuffle(labelled)
    third = len(labelled) // 3
    parts = {
        "train": _rows("train", labelled[:third]),
        "valid": _rows("valid", labelled[third : 2 * third]),
        "test": _rows("test", labelled[2 * third :]),
        "unlabeled": [],
    }
    return parts, labels


def emotion_parts(
    directory: Path, per_class: int = 8, n_valid: int = 500, n_test: int = 2000, seed: int = 0
):
    def read(name: str) -> list[tuple[str, list[str]]]:
        with open(directory / name, newline="") as fh:
            return [(r["text"], [EMOTION_NAMES[int(r["labels"])]]) for r in csv.DictReader(fh)]

    rng = random.Random(seed)
    train_all = read("train.csv")
    rng.shuffle(train_all)
    train = []
    for name in EMOTION_NAMES:
        train += [x for x in train_all if x[1] == [name]][:per_class]
    dev, test = read("dev.csv"), read("test.csv")
    rng.shuffle(dev)
    rng.shuffle(test)
    parts = {
        "train": _rows("train", train),
        "valid": _rows("valid", dev[:n_valid]),
        "test": _rows("test", test[:n_test]),
        "unlabeled": [],
    }
    return parts, EMOTION_NAMES


def naive_bayes(
    parts: dict[str, list[dict]], labels: list[str], multi: bool, n_train: int | None = None
) -> dict:
    """CountVectorizer + MultinomialNB (one-vs-rest for multi-label) on the train split."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.naive_bayes import MultinomialNB

    train = parts["train"][:n_train] if n_train else parts["train"]
    vec = CountVectorizer()
    x_train = vec.fit_transform([r["text"] for r in train])
    out: dict = {"train_rows": len(train)}
    if multi:
        y = label_matrix([r["labels"] for r in train], labels)
        keep = y.sum(axis=0) > 0  # labels absent from a small slice cannot be learnt
        clf = OneVsRestClassifier(MultinomialNB()).fit(x_train, y[:, keep])
    else:
        clf = MultinomialNB().fit(x_train, [r["labels"][0] for r in train])
    for split in ("valid", "test"):
        x = vec.transform([r["text"] for r in parts[split]])
        y_true = label_matrix([r["labels"] for r in parts[split]], labels)
        if multi:
            y_pred = np.zeros_like(y_true)
            y_pred[:, keep] = clf.predict(x)
        else:
            y_pred = label_matrix([[p] for p in clf.predict(x)], labels)
        m = f1_scores(y_true, y_pred)
        if not multi:
            m["accuracy"] = accuracy(y_true, y_pred)
        out[split] = {k: round(v, 4) for k, v in m.items()}
    return out


def zero_shot(parts, labels, multi: bool, root: Path, **cfg_kw) -> dict:
    splits = write_splits(root / "split", parts, labels, multi)
    started = time.time()
    ref = run_zero_shot(
        StageStore(root / "store"), ZeroShotConfig(backend="embedding", **cfg_kw), splits
    )
    metrics = json.loads((ref.dir / "metrics.json").read_text())
    out = {"selection": metrics["selection"], "seconds": round(time.time() - started, 1)}
    for split in ("valid", "test"):
        m = dict(metrics[split])
        if multi:
            m.pop("accuracy", None)  # exact-match accuracy: not the figure asked for multi-label
        out[split] = {k: round(v, 4) for k, v in m.items()}
    return out


def show(name: str, res: dict) -> None:
    for split in ("valid", "test"):
        figs = ", ".join(f"{k} {v:.3f}" for k, v in res[split].items())
        print(f"  {name:<34} {split:<5} {figs}")


def show_all(results: dict[str, dict], with_value: bool) -> None:
    """``show`` each result, named with its selection rule (and value) or its training rows."""
    for k, v in results.items():
        if "selection" in v:
            sel = v["selection"]
            note = f"{sel['rule']} {sel['value']:g}" if with_value else sel["rule"]
        else:
            note = f"{v['train_rows']} rows"
        show(f"{k} ({note})", v)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emotion-dir", default=str(DATASETS / "emotion"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="quality-zero-shot-"))
    results: dict = {}

    parts, labels = goemotions_parts()
    print(
        f"GoEmotions Ekman sample (multi-label, {len(labels)} labels): "
        f"train {len(parts['train'])} / valid {len(parts['valid'])} / test {len(parts['test'])}"
    )
    ge = {
        "zero_shot_embedding": zero_shot(parts, labels, True, tmp / "ge"),
        "zero_shot_embedding_macro": zero_shot(
            parts, labels, True, tmp / "ge-macro", metric="macro_f1"
        ),
        "naive_bayes_train": naive_bayes(parts, labels, True),
        "naive_bayes_64": naive_bayes(parts, labels, True, n_train=64),
    }
    show_all(ge, with_value=True)
    results["goemotions_ekman_sample"] = ge

    emo_dir = Path(args.emotion_dir)
    if (emo_dir / "train.csv").is_file():
        parts, labels = emotion_parts(emo_dir)
        print(
            f"emotion (single-label, 6 labels): train {len(parts['train'])} / valid "
            f"{len(parts['valid'])} / test {len(parts['test'])}"
        )
        emo = {
            "zero_shot_embedding": zero_shot(parts, labels, False, tmp / "emo"),
            "naive_bayes_train": naive_bayes(parts, labels, False),
        }
        show_all(emo, with_value=False)
        results["emotion"] = emo
    else:
        print(f"emotion dataset not found at {emo_dir}; skipped")

    write_results("zero_shot_quality", results)
    return results


if __name__ == "__main__":
    main()
