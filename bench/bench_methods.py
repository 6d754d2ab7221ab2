"""Quality of every registered method across training-slice sizes.

Datasets:

- ``goemotions``: the embedded default sample (multi-label, 7 labels): its 600 labelled
  rows split once (seeded) into test 200 / valid 100 / train 300, nested training slices of
  8, 16, 32, 64, 128 and 300 rows (label-balanced greedy order);
- ``emotion``: ../shared/datasets/emotion (single-label, 6 labels): slices of 8, 16, 32
  and 64 rows *per class* sampled from train (as in the SetFit paper), valid = 600 rows of
  dev, test = the full 2000-row test split.

Each method is fitted through the same code as the train stage (``fit_and_predict``,
decision tuned on valid) and scored on test. Prints tables; writes
``bench/results/bench_methods.json``.

Usage: ``python bench/bench_methods.py [--datasets goemotions emotion] [--methods ...]
[--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emotion import EMOTION, EMOTION_LABELS  # noqa: E402
from harness import ROOT, setup_project, write_results  # noqa: E402

setup_project()

from label_pipeline.decision import apply_decision, tune_decision  # noqa: E402
from label_pipeline.devices import choose_device  # noqa: E402
from label_pipeline.methods import REGISTRY, FitContext, LabelledTexts  # noqa: E402
from label_pipeline.metrics import classification_metrics  # noqa: E402
from label_pipeline.models import DEFAULT_ENCODER, resolve_model  # noqa: E402
from tasks.train import fit_and_predict  # noqa: E402


def balanced_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row order in which every prefix covers the labels as evenly as possible."""
    remaining = list(rng.permutation(len(y)))
    counts = np.zeros(y.shape[1])
    order = []
    while remaining:
        # the rarest label so far among those still available
        avail = y[remaining].sum(axis=0) > 0
        if not avail.any():
            order += remaining
            break
        target = np.where(avail, counts, np.inf).argmin()
        pick = next(i for i in remaining if y[i, target])
        remaining.remove(pick)
        order.append(pick)
        counts += y[pick]
    return np.array(order)


def load_goemotions(seed: int) -> dict:
    from label_pipeline.data import label_matrix

    rows = list(csv.DictReader(open(ROOT / "data/goemotions-ekman-sample.csv", newline="")))
    labelled = [r for r in rows if r["labels"].strip()]
    unlabeled = [r["text"] for r in rows if not r["labels"].strip()]
    labels = sorted({lab for r in labelled for lab in r["labels"].split(";")})
    texts = [r["text"] for r in labelled]
    y = label_matrix([r["labels"].split(";") for r in labelled], labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(texts))
    test, valid, train = perm[:200], perm[200:300], perm[300:]
    order = train[balanced_order(y[train], rng)]
    slices = {str(n): order[:n] for n in (8, 16, 32, 64, 128)}
    slices["all"] = order
    return {
        "name": "goemotions",
        "labels": labels,
        "multi_label": True,
        "texts": texts,
        "y": y,
        "valid": valid,
        "test": test,
        "slices": slices,
        "unlabeled": unlabeled,
    }


def load_emotion(seed: int, valid_rows: int = 600) -> dict:
    def read(name: str) -> tuple[list[str], list[int]]:
        rows = list(csv.DictReader(open(EMOTION / name, newline="")))
        return [r["text"] for r in rows], [int(r["labels"]) for r in rows]

    tr_t, tr_y = read("train.csv")
    dv_t, dv_y = read("dev.csv")
    te_t, te_y = read("test.csv")
    rng = np.random.default_rng(seed)
    texts = tr_t + dv_t + te_t
    y = np.eye(len(EMOTION_LABELS), dtype=np.int64)[tr_y + dv_y + te_y]
    n_tr, n_dv = len(tr_t), len(dv_t)
    valid = n_tr + rng.permutation(n_dv)[:valid_rows]
    test = np.arange(n_tr + n_dv, len(texts))
    by_class = [rng.permutation(np.flatnonzero(np.array(tr_y) == c)) for c in range(6)]
    slices = {f"{n}/class": np.concatenate([idx[:n] for idx in by_class]) for n in (8, 16, 32, 64)}
    return {
        "name": "emotion",
        "labels": EMOTION_LABELS,
        "multi_label": False,
        "texts": texts,
        "y": y,
        "valid": valid,
        "test": test,
        "slices": slices,
        "unlabeled": [],
    }


def subset(data: dict, idx: np.ndarray) -> LabelledTexts:
    return LabelledTexts(
        [data["texts"][i] for i in idx], data["y"][idx], data["labels"], data["multi_label"]
    )


def run(data: dict, methods: list[str], seed: int, encoder: str) -> list[dict]:
    device = choose_device()
    valid, test = subset(data, data["valid"]), subset(data, data["test"])
    out = []
    for slice_name, idx in data["slices"].items():
        train = subset(data, idx)
        for method in methods:
            with tempfile.TemporaryDirectory() as work:
                ctx = FitContext(
                    device=device,
                    seed=seed,
                    encoder=encoder,
                    unlabeled_texts=data["unlabeled"],
                    work_dir=Path(work),
                )
                t0 = time.time()
                vp, tp, facts = fit_and_predict(
                    method, {}, train, valid, test.texts, ctx, Path(work) / "model"
                )
                seconds = time.time() - t0
            dec = tune_decision(vp, valid.y, data["multi_label"])
            m = classification_metrics(
                test.y, tp, apply_decision(tp, dec), data["labels"], data["multi_label"]
            )
            row = {
                "dataset": data["name"],
                "method": method,
                "slice": slice_name,
                "train_rows": len(train),
                "seed": seed,
                "test_micro_f1": m["micro_f1"],
                "test_macro_f1": m["macro_f1"],
                "test_accuracy": m.get("accuracy"),
                "decision": dec.describe(),
                "seconds": round(seconds, 2),
                "fallback": facts.get("fallback", ""),
            }
            out.append(row)
            acc = f" acc {row['test_accuracy']:.3f}" if row["test_accuracy"] is not None else ""
            print(
                f"  {data['name']:<10} {method:<12} {slice_name:>8} ({len(train):>4} rows) "
                f"micro {m['micro_f1']:.3f} macro {m['macro_f1']:.3f}{acc} [{seconds:.1f}s]",
                flush=True,
            )
    return out


def table(results: list[dict], dataset: str, metric: str) -> str:
    rows = [r for r in results if r["dataset"] == dataset]
    slices = list(dict.fromkeys(r["slice"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        f"{dataset}: test {metric} (mean over seeds)",
        f"{'method':<14}" + "".join(f"{s:>10}" for s in slices),
    ]
    for m in methods:
        cells = []
        for s in slices:
            vals = [r[metric] for r in rows if r["method"] == m and r["slice"] == s]
            cells.append(
                f"{np.mean(vals):>10.3f}" if vals and vals[0] is not None else f"{'-':>10}"
            )
        lines.append(f"{m:<14}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", default=["goemotions", "emotion"])
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered one")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    methods = args.methods or sorted(REGISTRY)
    encoder = str(resolve_model(args.encoder, "bench encoder"))
    print(f"methods: {', '.join(methods)}; device: {choose_device().describe()}")
    results: list[dict] = []
    started = time.time()
    for seed in args.seeds:
        for name in args.datasets:
            if name == "emotion" and not EMOTION.is_dir():
                print(f"skip emotion: {EMOTION} not found")
                continue
            data = load_goemotions(seed) if name == "goemotions" else load_emotion(seed)
            results += run(data, methods, seed, encoder)
    print()
    for name in args.datasets:
        metrics = ["test_micro_f1", "test_macro_f1"] + (
            ["test_accuracy"] if name == "emotion" else []
        )
        for metric in metrics:
            if any(r["dataset"] == name for r in results):
                print(table(results, name, metric), end="\n\n")
    summary = {
        "methods": methods,
        "seeds": args.seeds,
        "seconds": round(time.time() - started, 1),
        "results": results,
    }
    write_results("bench_methods", summary, indent=1)


if __name__ == "__main__":
    main()
