"""Naive Bayes with and without augmentation, per nested training slice.

For each dataset (the embedded default, GoEmotions-Ekman multi-label; and emotion,
single-label) the script builds the split stage output (through the real ingest, clean and
split stages when they are built, else a seeded nested-slice split of the labelled rows
written in the split stage's format), runs the real ``augment`` stage on it, then trains
``CountVectorizer + MultinomialNB`` (one-vs-rest, threshold 0.5, for multi-label; argmax
for single-label) on each slice's rows, alone and with the augmentations of those rows
(``parent_id`` in the slice), and prints test micro/macro-F1.

Run: ``.venv/bin/python bench/quality_augment.py`` (writes bench/results/quality_augment.json).
"""

from __future__ import annotations

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

import datasets  # noqa: E402
import numpy as np  # noqa: E402

from label_pipeline.data import label_matrix, write_label_info  # noqa: E402
from label_pipeline.store import StageRef, StageStore  # noqa: E402
from tasks.augment import AugmentConfig, run_augment  # noqa: E402

SLICES = (8, 16, 32, 64, 128)
EMOTION = DATASETS / "emotion"
EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def _nested_split(
    rows: list[dict],
    test: list[dict],
    unlabeled: list[str],
    labels: list[str],
    multi: bool,
    out: Path,
    n_train: int,
) -> StageRef:
    """Split-stage-format directory: train (n_train rows, nested slices), valid, test."""
    rng = random.Random(0)
    rows = rows[:]
    rng.shuffle(rows)
    train, valid = rows[:n_train], rows[n_train : n_train + 100]
    slices = {str(k): [r["id"] for r in train[:k]] for k in SLICES if k < len(train)}
    slices["all"] = [r["id"] for r in train]
    min_slice = {}
    for name in [*map(str, SLICES), "all"]:
        for i in slices.get(name, []):
            min_slice.setdefault(i, name)

    def ds(part: list[dict], split: str, with_slice: bool = False) -> datasets.Dataset:
        d = {
            "id": [r["id"] for r in part],
            "text": [r["text"] for r in part],
            "labels": [r["labels"] for r in part],
            "split": [split] * len(part),
        }
        if with_slice:
            d["min_slice"] = [min_slice[r["id"]] for r in part]
        return datasets.Dataset.from_dict(d)

    datasets.DatasetDict(
        {
            "train": ds(train, "train", True),
            "valid": ds(valid, "valid"),
            "test": ds(test, "test"),
            "unlabeled": ds(
                [{"id": f"u{i}", "text": t, "labels": []} for i, t in enumerate(unlabeled)],
                "unlabeled",
            ),
        }
    ).save_to_disk(str(out / "splits"))
    (out / "slices.json").write_text(json.dumps(slices))
    write_label_info(out, labels, multi)
    return StageRef(stage="split", fingerprint=f"quality-{out.name}", path=str(out))


def _real_split(csv_path: Path, store: StageStore) -> StageRef | None:
    """ingest -> clean -> split through the real stages, when they are built."""
    try:
        from tasks import clean, ingest, split

        icfg = ingest.IngestConfig.model_validate({"path": str(csv_path)})
        rows = ingest.run_ingest(store, icfg)
        cleaned = clean.run_clean(store, clean.CleanConfig(), rows=rows)
        return split.run_split(store, split.SplitConfig(), rows=cleaned)
    except (NotImplementedError, ValueError, TypeError, AttributeError) as exc:
        print(f"  (real split stage not usable here: {type(exc).__name__}: {exc}; seeded split)")
        return None


def default_dataset(tmp: Path, store: StageStore) -> StageRef:
    ref = _real_split(ROOT / "data" / "goemotions-ekman-sample.csv", store)
    if ref is not None:
        return ref
    with open(ROOT / "data" / "goemotions-ekman-sample.csv", newline="") as fh:
        all_rows = list(csv.DictReader(fh))
    labelled = [r for r in all_rows if r["labels"].strip()]
    unlabeled = [r["text"] for r in all_rows if not r["labels"].strip()][:500]
    rows = [
        {"id": f"g{i}", "text": r["text"], "labels": r["labels"].split(";")}
        for i, r in enumerate(labelled)
    ]
    labels = sorted({lab for r in rows for lab in r["labels"]})
    rng = random.Random(1)
    rng.shuffle(rows)
    test, rest = rows[:200], rows[200:]
    return _nested_split(rest, test, unlabeled, labels, True, tmp / "default", n_train=300)


def emotion_dataset(tmp: Path) -> StageRef:
    def read(name: str, prefix: str) -> list[dict]:
        with open(EMOTION / name, newline="") as fh:
            return [
                {
                    "id": f"{prefix}{i}",
                    "text": r["text"],
                    "labels": [EMOTION_LABELS[int(r["labels"])]],
                }
                for i, r in enumerate(csv.DictReader(fh))
            ]

    train = read("train.csv", "e")
    random.Random(2).shuffle(train)
    test = read("test.csv", "t")
    unlabeled = [r["text"] for r in read("dev.csv", "d")][:500]
    return _nested_split(
        train[:1000], test, unlabeled, EMOTION_LABELS, False, tmp / "emotion", n_train=300
    )


def nb_scores(
    train_texts: list[str], train_labels: list[list[str]], test_texts, test_y, labels, multi
) -> tuple[float, float]:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.naive_bayes import MultinomialNB

    vec = CountVectorizer()
    x = vec.fit_transform(train_texts)
    xt = vec.transform(test_texts)
    y = label_matrix(train_labels, labels)
    if multi:
        # labels absent from the slice get no classifier: predicted never
        present = np.flatnonzero(y.sum(0) > 0)
        clf = OneVsRestClassifier(MultinomialNB()).fit(x, y[:, present])
        pred = np.zeros_like(test_y)
        pred[:, present] = (clf.predict_proba(xt) >= 0.5).astype(int)
    else:
        clf = MultinomialNB().fit(x, y.argmax(1))
        pred = np.zeros_like(test_y)
        pred[np.arange(len(pred)), clf.predict(xt)] = 1
    return (
        f1_score(test_y, pred, average="micro", zero_division=0),
        f1_score(test_y, pred, average="macro", zero_division=0),
    )


def evaluate(name: str, splits: StageRef, store: StageStore, cfg: AugmentConfig) -> list[dict]:
    from label_pipeline.data import load_slices, load_splits, read_label_info

    started = time.perf_counter()
    aug_ref = run_augment(store, cfg, splits=splits)
    aug_s = time.perf_counter() - started
    aug = datasets.load_from_disk(str(aug_ref.dir / "rows"))
    dd = load_splits(splits.dir)
    labels, multi = read_label_info(splits.dir)
    slices = load_slices(splits.dir)
    train = {r["id"]: r for r in dd["train"]}
    test_y = label_matrix(dd["test"]["labels"], labels)
    print(f"\n{name}: {len(train)} train rows, {len(aug)} augmented rows ({aug_s:.0f}s)")
    print(f"{'slice':>6} {'n':>5} {'n_aug':>6} | NB micro  macro | NB+aug micro  macro")
    out = []
    for sname, ids in slices.items():
        idset = set(ids)
        base_t = [train[i]["text"] for i in ids]
        base_l = [train[i]["labels"] for i in ids]
        extra = [r for r in aug if r["parent_id"] in idset]
        mi, ma = nb_scores(base_t, base_l, dd["test"]["text"], test_y, labels, multi)
        ami, ama = nb_scores(
            base_t + [r["text"] for r in extra],
            base_l + [r["labels"] for r in extra],
            dd["test"]["text"],
            test_y,
            labels,
            multi,
        )
        print(f"{sname:>6} {len(ids):>5} {len(extra):>6} | {mi:.3f} {ma:.3f} | {ami:.3f} {ama:.3f}")
        out.append(
            {
                "slice": sname,
                "n": len(ids),
                "n_aug": len(extra),
                "nb_micro_f1": mi,
                "nb_macro_f1": ma,
                "nb_aug_micro_f1": ami,
                "nb_aug_macro_f1": ama,
            }
        )
    return out


def main() -> None:
    from label_pipeline.resources import ensure_nltk_path

    ensure_nltk_path()
    cfg = AugmentConfig()  # the default methods: synonym, back_translation, random_word
    results = {"augment_config": cfg.model_dump(mode="json")}
    with tempfile.TemporaryDirectory() as tmp:
        store = StageStore(Path(tmp) / "store")
        results["default"] = evaluate(
            "embedded default (GoEmotions-Ekman sample)",
            default_dataset(Path(tmp), store),
            store,
            cfg,
        )
        if EMOTION.is_dir():
            results["emotion"] = evaluate("emotion", emotion_dataset(Path(tmp)), store, cfg)
    write_results("quality_augment", results)


if __name__ == "__main__":
    main()
