"""How many self-training rounds pay: ``prototype``'s test score after its labelled rows and
after each self-training round, with the seconds each round took.

The fit is the method's own; after the labelled rows and after every round (where the fit
scores valid) this benchmark also predicts test and scores it as the pipeline would decide:

- ``emotion`` (single-label, ../shared/datasets/emotion): N rows per label from train.csv,
  N per label (at least 8) from dev.csv as valid, a 4,000-row unlabeled pool from train.csv,
  the full test.csv; accuracy and macro-F1 with the pool's label shift estimated from valid
  and pool predictions (the train stage's ``train.label_shift: pool``) and without.
- ``kept`` (a stage store kept by ``bench_issues.py --keep DIR``, e.g. the embedded default
  data in ``DIR/goemotions-0``): its split stage's slices, valid, test and unlabeled rows;
  multi-label rows are decided by thresholds tuned on valid (``threshold: auto``, per label
  where a label has enough valid positives), single-label rows by the argmax. The fit starts
  from the encoder the kept run's train stage read: the store's adapt stage model when the
  adapt stage ran (``--encoder`` overrides it).

A round's seconds leave out the benchmark's own test and pool predictions.

    .venv/bin/python bench/bench_rounds.py emotion --n 8 --seeds 0
    .venv/bin/python bench/bench_issues.py --datasets goemotions --no-ablation --keep DIR
    .venv/bin/python bench/bench_rounds.py kept DIR/goemotions-0 --slices 8 32 128

Writes ``bench/results/bench_rounds_<mode><tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import only_one, setup_project, split_rows, write_results  # noqa: E402

setup_project()


def _rows(texts: Any, y: np.ndarray, names: list[str], multi: bool) -> Any:
    from label_pipeline.methods import LabelledTexts

    return LabelledTexts(list(texts), np.asarray(y), names, multi)


def _test_scores(pv: np.ndarray, pt: np.ndarray, valid: Any, test: Any, shift: Any) -> dict:
    """Test scores of one checkpoint: ``shift()`` gives the label-shift estimate or None."""
    from sklearn.metrics import accuracy_score, f1_score

    from label_pipeline.decision import apply_decision, tune_decision

    if test.multi_label:
        pred = apply_decision(pt, tune_decision(pv, valid.y, True, mode="auto"))
        return {
            m: round(100 * f1_score(test.y, pred, average=m, zero_division=0), 2)
            for m in ("micro", "macro")
        }

    def single(p: np.ndarray) -> dict:
        yi, pi = test.y.argmax(1), p.argmax(1)
        return {
            "accuracy": round(100 * accuracy_score(yi, pi), 2),
            "macro": round(100 * f1_score(yi, pi, average="macro", zero_division=0), 2),
        }

    est = shift()
    out = single(pt)
    if est is not None:
        out = {**single(est.apply(pt)), "without_label_shift": out}
    return out


def fit_with_checkpoints(
    train: Any, valid: Any, test: Any, pool: list[str], seed: int, params: dict, encoder: Any
) -> dict:
    """Fit ``prototype`` on ``train`` with ``pool``; score test at every valid scoring."""
    from label_pipeline.label_shift import estimate_label_shift
    from label_pipeline.methods import FitContext
    from label_pipeline.methods.prototype import Prototype

    checkpoints: list[dict[str, Any]] = []
    own = [0.0]  # seconds spent on the benchmark's predictions
    last = [time.time()]
    original = Prototype._score

    def scored(self: Prototype, v: Any) -> float:
        score = original(self, v)
        t0 = time.time()
        pv, pt = self.predict_proba(list(v.texts)), self.predict_proba(list(test.texts))

        def shift() -> Any:
            if test.multi_label or not pool:
                return None
            return estimate_label_shift(pv, v.y, self.predict_proba(pool), self.source_prior(train))

        point = {
            "valid": round(score, 4),
            "seconds": round(t0 - last[0], 1),
            "test": _test_scores(pv, pt, v, test, shift),
        }
        checkpoints.append(point)
        print(json.dumps(point), flush=True)
        own[0] += time.time() - t0
        last[0] = time.time()
        return score

    Prototype._score = scored
    try:
        t0 = time.time()
        ctx = FitContext(seed=seed, unlabeled_texts=pool, encoder=encoder)
        Prototype(**params).fit(train, valid, ctx)
    finally:
        Prototype._score = original
    names = ["zero-shot", "labelled"] + [f"round {r['round']}" for r in ctx.info["self_training"]]
    return {
        "fit_s": round(time.time() - t0 - own[0], 1),
        "checkpoints": [{"after": n, **c} for n, c in zip(names, checkpoints, strict=False)],
    }


def bench_emotion(args: argparse.Namespace) -> list[dict]:
    from _emotion import EMOTION_LABELS, read_emotion, sample_per_label

    train_all, dev, test_df = read_emotion()
    eye = np.eye(len(EMOTION_LABELS), dtype=np.int64)

    def rows(df: Any) -> Any:
        return _rows(df["text"], eye[df["labels"].to_numpy()], EMOTION_LABELS, False)

    out = []
    for n in args.n:
        for seed in args.seeds:
            train = rows(sample_per_label(train_all, n, seed))
            valid = rows(sample_per_label(dev, max(n, 8), seed))
            pool = list(train_all.sample(n=args.pool, random_state=seed + 1000)["text"])
            r = fit_with_checkpoints(
                train, valid, rows(test_df), pool, seed, args.params, args.encoder_dir
            )
            out.append({"n_per_class": n, "seed": seed, **r})
    return out


def kept_encoder(kept: Path) -> str | None:
    """The domain-adapted encoder of a kept store (its adapt stage's model), which the kept
    run's train stage fine-tuned; None when the adapt stage did not run."""
    store = kept / "store"
    if not any(store.glob("adapt/*/model")):
        return None
    return str(only_one(store, "adapt/*/model", "adapt stage model"))


def bench_kept(args: argparse.Namespace) -> list[dict]:
    data = split_rows(only_one(Path(args.kept) / "store", "split/*/", "split stage"))
    if args.encoder_dir is None:
        args.encoder_dir = kept_encoder(Path(args.kept))
    print(f"encoder: {args.encoder_dir or 'the method default'}", flush=True)
    pool = [t for t in data["pool"] or [] if t and t.strip()]
    out = []
    for name in args.slices:
        # the slice's rows in the order of the train split
        ids = sorted(data["slices"][name], key=data["row_of"].get)
        train = data["slice_rows"](ids)
        r = fit_with_checkpoints(
            train, data["valid"], data["test"], pool, args.seed, args.params, args.encoder_dir
        )
        out.append({"slice": name, "train_rows": len(train), **r})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["emotion", "kept"])
    parser.add_argument("kept", nargs="?", help="kept: KEEP/<dataset>-<seed> of bench_issues")
    parser.add_argument("--n", type=int, nargs="+", default=[8], help="emotion: rows per label")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="emotion: seeds")
    parser.add_argument("--pool", type=int, default=4000, help="emotion: unlabeled rows")
    parser.add_argument("--slices", nargs="+", default=["8", "32", "128"], help="kept: slices")
    parser.add_argument("--seed", type=int, default=0, help="kept: the fit's seed")
    parser.add_argument(
        "--rounds", type=int, default=3, help="self-training rounds to measure (default 3)"
    )
    parser.add_argument("--encoder", default=None, help="the encoder (default: the method's)")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args(argv)
    if args.mode == "kept" and not args.kept:
        parser.error("kept needs the directory of a kept store (KEEP/<dataset>-<seed>)")
    args.params = {"self_training_rounds": args.rounds}
    args.encoder_dir = None
    if args.encoder:
        from label_pipeline.models import resolve_model

        args.encoder_dir = str(resolve_model(args.encoder, "bench_rounds --encoder"))
    results = bench_emotion(args) if args.mode == "emotion" else bench_kept(args)
    out = {"params": args.params, "encoder": args.encoder_dir, "runs": results}
    write_results(f"bench_rounds_{args.mode}", out, args.tag)


if __name__ == "__main__":
    main()
