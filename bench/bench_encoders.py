"""MiniLM against mpnet as the frozen encoder of the same methods, on emotion.

emotion (../shared/datasets/emotion, single-label, 6 labels), the protocol of
``bench_finetune.py emotion``: K labelled rows per class sampled from train.csv with each
seed, valid = max(K, 8) rows per class of dev.csv (same seed), test = the full test.csv (2000
rows; ``--test-rows`` samples fewer, with seed 0). Each method is fitted with its default
settings through the train stage's ``fit_method`` (no calibration, no label shift) with
``FitContext(encoder=...)`` set to each encoder; test accuracy and macro-F1 (argmax, in %)
are recorded beside the fit seconds and the predict seconds (valid + test).

The test texts are embedded once per encoder before the fits (``label_pipeline.embeddings``
keeps every text's vector per encoder in-process), timed on its own as ``encode_test_s``; the
frozen-encoder methods' predict seconds therefore read cached test vectors. ``prototype``
(run with ``self_training_rounds: 0``) fine-tunes the encoder, so it encodes test itself.

Runs go cheapest first, so that a run stopped early has the most rows: the frozen-encoder
methods for every K, seed and encoder, then the fine-tuning ones. The JSON is rewritten after
every fit (``"complete": false`` until the end).

    .venv/bin/python bench/bench_encoders.py [--k 8 64] [--seeds 0 1 2]
        [--methods embed_lr knn hybrid prototype] [--test-rows 0]

Prints a table (method x encoder, mean over seeds) per K; writes
``bench/results/encoders.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emotion import EMOTION_LABELS, read_emotion, sample_per_label  # noqa: E402
from harness import setup_project, write_results  # noqa: E402

setup_project()

ENCODERS = {
    "MiniLM": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
}
FROZEN = ("embed_lr", "knn", "hybrid")
#: settings other than the defaults: prototype without self-training (no pool here)
PARAMS = {"prototype": {"self_training_rounds": 0}}


def _rows(df):
    from label_pipeline.methods import LabelledTexts

    eye = np.eye(len(EMOTION_LABELS), dtype=np.int64)
    return LabelledTexts(
        list(df["text"]), eye[df["labels"].to_numpy()], EMOTION_LABELS, multi_label=False
    )


def _scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    yi, pi = y.argmax(1), probs.argmax(1)
    return {
        "accuracy": round(100 * accuracy_score(yi, pi), 2),
        "macro_f1": round(100 * f1_score(yi, pi, average="macro", zero_division=0), 2),
    }


def table(results: list[dict]) -> str:
    lines = []
    for k in sorted({r["k"] for r in results}):
        rows = [r for r in results if r["k"] == k]
        lines.append(f"emotion, K={k} per class (mean over seeds; predict = valid + test)")
        lines.append(
            f"{'method':<10} {'encoder':<7} {'seeds':<7} {'acc':>6} {'macroF1':>8} "
            f"{'fit s':>7} {'pred s':>7}"
        )
        for method in dict.fromkeys(r["method"] for r in rows):
            for enc in ENCODERS:
                sel = [r for r in rows if r["method"] == method and r["encoder"] == enc]
                if not sel:
                    continue
                seeds = ",".join(str(r["seed"]) for r in sel)

                def mean(key: str, sel: list[dict] = sel) -> float:
                    return float(np.mean([r[key] for r in sel]))

                lines.append(
                    f"{method:<10} {enc:<7} {seeds:<7} {mean('accuracy'):>6.2f} "
                    f"{mean('macro_f1'):>8.2f} {mean('fit_s'):>7.1f} {mean('predict_s'):>7.1f}"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[8], help="rows per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=[*FROZEN, "prototype"])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--test-rows", type=int, default=0, help="0 = the full test set")
    args = parser.parse_args()

    from label_pipeline.devices import choose_device
    from label_pipeline.embeddings import embed_texts
    from label_pipeline.methods import FitContext
    from label_pipeline.models import resolve_model
    from tasks.train import fit_method

    device = choose_device()
    train_all, dev, test_df = read_emotion()
    if args.test_rows:
        test_df = test_df.sample(n=args.test_rows, random_state=0)
    test = _rows(test_df)
    dirs = {name: str(resolve_model(ENCODERS[name], "bench encoder")) for name in args.encoders}
    print(f"device: {device.describe()}; test rows: {len(test)}", flush=True)

    started = time.time()
    doc: dict = {
        "dataset": "emotion",
        "protocol": "train: K/class of train.csv; valid: max(K,8)/class of dev.csv; test: test.csv",
        "test_rows": len(test),
        "k": args.k,
        "seeds": args.seeds,
        "methods": args.methods,
        "params": {m: PARAMS.get(m, {}) for m in args.methods},
        "encoders": {name: ENCODERS[name] for name in args.encoders},
        "encode_test_s": {},
        "results": [],
        "complete": False,
    }

    def save() -> Path:
        doc["seconds"] = round(time.time() - started, 1)
        return write_results("encoders", doc, indent=1)

    # cheapest first: frozen-encoder methods everywhere, then the ones that fine-tune
    groups = [
        [m for m in args.methods if m in FROZEN],
        [m for m in args.methods if m not in FROZEN],
    ]
    for group in groups:
        for k in args.k:
            for seed in args.seeds:
                train = _rows(sample_per_label(train_all, k, seed))
                valid = _rows(sample_per_label(dev, max(k, 8), seed))
                for enc, enc_dir in dirs.items():
                    if group and group[0] in FROZEN and enc not in doc["encode_test_s"]:
                        t0 = time.time()
                        embed_texts(enc_dir, test.texts, device)
                        doc["encode_test_s"][enc] = round(time.time() - t0, 1)
                        print(f"{enc}: test encoded in {doc['encode_test_s'][enc]}s", flush=True)
                        save()
                    for method in group:
                        with tempfile.TemporaryDirectory() as work:
                            ctx = FitContext(
                                device=device, seed=seed, encoder=enc_dir, work_dir=Path(work)
                            )
                            fitted = fit_method(
                                method, PARAMS.get(method, {}), train, valid, test.texts, ctx
                            )
                        facts = fitted.facts
                        row = {
                            "method": method,
                            "encoder": enc,
                            "k": k,
                            "seed": seed,
                            "train_rows": len(train),
                            "valid_rows": len(valid),
                            **_scores(fitted.test_probs, test.y),
                            "fit_s": facts.get("fit_seconds"),
                            "predict_s": facts.get("predict_seconds"),
                            "fallback": facts.get("fallback", ""),
                        }
                        doc["results"].append(row)
                        save()
                        print(json.dumps(row), flush=True)
    doc["complete"] = True
    out = save()
    print()
    print(table(doc["results"]))
    print(f"encode test once per encoder (s): {doc['encode_test_s']}")
    print(f"wrote {out} in {doc['seconds']}s")


if __name__ == "__main__":
    main()
