"""Label-quality benchmark: does the quality stage find wrong labels, and does dropping them help?

On ../shared/datasets/emotion (single-label, 6 labels), with each seed: N labelled rows per
label sampled from train.csv (as ``bench_finetune.py emotion``), a validation set of N rows
per label from dev.csv, and ``--flip`` of the training labels (10 % by default) replaced by a
uniformly drawn other label. The quality check (``label_pipeline.label_quality``, the
functions the quality stage runs: stratified K-fold out-of-fold probabilities from
``--quality-method``, cleanlab's ``find_label_issues``) flags rows; their precision and recall
against the flipped rows are reported, with the share of flipped rows whose suggested label
is the true one. Then ``--final-method`` is fitted on the clean labels, on the noisy labels
(``train.label_issues: keep``), on the noisy labels without the flagged rows (``drop``) and
with the flagged rows relabelled (``relabel``), and scored on the full test.csv (accuracy,
macro-F1). ``recovered`` = (drop - noisy) / (clean - noisy) of the accuracy.

    .venv/bin/python bench/bench_label_issues.py --seeds 0 1 2          # hybrid, the stage's default
    .venv/bin/python bench/bench_label_issues.py --seeds 0 --quality-method setfit
    .venv/bin/python bench/bench_label_issues.py --seeds 0 1 2 --reference-rows 0 500 2000
    .venv/bin/python bench/bench_label_issues.py --seeds 0 1 2 --valid-use early_stopping

``--valid-use`` is ``quality.valid_use`` (default: the stage's, ``fit``): the validation rows
(correctly labelled, as a user's valid split is meant to be) join every fold's training rows,
or (``early_stopping``) are only handed to the method. ``--reference-rows`` runs fit the folds
without them.

``--reference-rows M ...`` is a yardstick, not something a user can do: how good must the
out-of-fold model be? For each M it adds M correctly labelled emotion rows (from train.csv,
outside the sample) to every fold's training rows, so the out-of-fold model grows stronger
while the rows it scores stay the same, and prints its out-of-fold accuracy beside the
precision and recall of the flags (``--quality-method``; the final-model fits are skipped).

Prints one line per seed, the precision/recall of other cleanlab rules and margins on the
same out-of-fold probabilities, the means, and writes
``bench/results/bench_label_issues[<tag>].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emotion import EMOTION, read_emotion, sample_per_label  # noqa: E402
from _emotion import EMOTION_LABELS as LABELS  # noqa: E402
from harness import setup_project, write_results  # noqa: E402

setup_project()

from tasks.quality import QualityConfig, resolve_method  # noqa: E402

RULES = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning")
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4)
#: flagged-share caps whose drop variant is scored too (None: cleanlab's count)
CAPS = (None, 0.2, 0.15, 0.1, 0.05)


def flip_labels(
    y: np.ndarray, share: float, n_labels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy label indices, indices of the flipped rows): ``round(share * rows)`` rows drawn
    with ``seed`` get a uniformly drawn label other than their own."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(y), int(round(share * len(y))), replace=False))
    noisy = y.copy()
    for i in flipped:
        noisy[i] = rng.choice([c for c in range(n_labels) if c != y[i]])
    return noisy, flipped


def detection(flagged: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    hit = len(set(np.flatnonzero(flagged)) & set(flipped.tolist()))
    n_flag = int(flagged.sum())
    return {
        "flagged": n_flag,
        "true_flags": hit,
        "precision": round(hit / n_flag, 3) if n_flag else 0.0,
        "recall": round(hit / len(flipped), 3) if len(flipped) else 0.0,
    }


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = p.argmax(axis=1)
    return {
        "accuracy": round(100 * accuracy_score(y, pred), 2),
        "macro_f1": round(100 * f1_score(y, pred, average="macro", zero_division=0), 2),
    }


def reference_curve(args, seed: int, frames) -> list[dict]:
    """Flag precision/recall against the out-of-fold model's accuracy, each fold's model
    also trained on M correctly labelled rows from outside the sample (see the docstring)."""
    from label_pipeline.label_quality import find_mislabelled, stratified_folds
    from label_pipeline.methods import FitContext, LabelledTexts, get_method

    train_all = frames[0]
    eye = np.eye(len(LABELS), dtype=np.int64)
    tr = sample_per_label(train_all, args.n, seed, keep_index=True)
    texts, truth = list(tr["text"]), tr["labels"].to_numpy()
    noisy, flipped = flip_labels(truth, args.flip, len(LABELS), seed)
    outside = train_all.drop(index=tr["index"]).sample(frac=1.0, random_state=seed)
    splits, how = stratified_folds(eye[noisy], False, args.folds, seed)
    params = json.loads(args.quality_params)
    cap = None if args.max_share <= 0 else args.max_share
    out = []
    for m in args.reference_rows:
        extra = outside.iloc[:m]
        extra_y = extra["labels"].to_numpy().astype(np.int64)
        probs = np.zeros((len(texts), len(LABELS)))
        t0 = time.time()
        for fit_idx, held in splits:
            rows = LabelledTexts(
                [texts[i] for i in fit_idx] + list(extra["text"]),
                eye[np.concatenate([noisy[fit_idx], extra_y])],
                LABELS,
                False,
            )
            model = get_method(args.quality_method)(**params).fit(rows, None, FitContext(seed=seed))
            probs[held] = model.predict_proba([texts[i] for i in held])
        verdict = find_mislabelled(eye[noisy], probs, False, args.filter_by, args.min_margin, cap)
        row = {
            "seed": seed,
            "reference_rows": m,
            "folds": how,
            "oof_accuracy_vs_true": round(100 * float(np.mean(probs.argmax(1) == truth)), 2),
            "oof_s": round(time.time() - t0, 1),
            **detection(verdict.flagged, flipped),
        }
        out.append(row)
        print(
            f"seed={seed} reference_rows={m} oof_acc={row['oof_accuracy_vs_true']} "
            f"flagged={row['flagged']} precision={row['precision']} recall={row['recall']}",
            flush=True,
        )
    return out


def run_seed(args, seed: int, frames) -> dict:
    from label_pipeline.label_quality import find_mislabelled, out_of_fold_probs
    from label_pipeline.methods import FitContext, LabelledTexts, get_method

    train_all, dev, test_df = frames
    eye = np.eye(len(LABELS), dtype=np.int64)
    tr = sample_per_label(train_all, args.n, seed)
    va = sample_per_label(dev, args.n, seed)
    texts = list(tr["text"])
    truth = tr["labels"].to_numpy()
    noisy, flipped = flip_labels(truth, args.flip, len(LABELS), seed)

    def rows(t, yi) -> LabelledTexts:
        return LabelledTexts(list(t), eye[yi], LABELS, False)

    valid = rows(va["text"], va["labels"].to_numpy())
    params = json.loads(args.quality_params)
    t0 = time.time()
    fit_valid = args.valid_use == "fit"  # as quality.valid_use
    oof = out_of_fold_probs(
        rows(texts, noisy),
        args.quality_method,
        params,
        args.folds,
        seed,
        lambda: FitContext(seed=seed),
        None if fit_valid or args.valid_use == "none" else valid,
        extra=valid if fit_valid else None,
    )
    oof_s = round(time.time() - t0, 1)
    cap = None if args.max_share <= 0 else args.max_share
    verdict = find_mislabelled(eye[noisy], oof.probs, False, args.filter_by, args.min_margin, cap)
    flagged = verdict.flagged
    found = detection(flagged, flipped)
    hits = [i for i in flipped if flagged[i]]
    found["suggestion_right"] = (
        round(float(np.mean([verdict.suggested[i][0] == truth[i] for i in hits])), 3)
        if hits
        else None
    )
    sweep = {}
    for rule in RULES:
        for margin in MARGINS:
            v = find_mislabelled(eye[noisy], oof.probs, False, rule, margin)
            sweep[f"{rule}@{margin:g}"] = detection(v.flagged, flipped)

    relabelled = noisy.copy()
    for i in np.flatnonzero(flagged):
        relabelled[i] = verdict.suggested[i][0]
    keep_rows = np.flatnonzero(~flagged)
    variants = {
        "clean": (texts, truth),
        "noisy": (texts, noisy),
        "drop": ([texts[i] for i in keep_rows], noisy[keep_rows]),
        "relabel": (texts, relabelled),
    }
    test_texts, test_y = list(frames[2]["text"]), frames[2]["labels"].to_numpy()
    final_params = json.loads(args.final_params)
    accuracy = {}
    for name, (t, yi) in variants.items():
        t0 = time.time()
        model = get_method(args.final_method)(**final_params).fit(
            rows(t, yi), valid, FitContext(seed=seed)
        )
        accuracy[name] = {
            **_scores(model.predict_proba(test_texts), test_y),
            "train_rows": len(t),
            "fit_s": round(time.time() - t0, 1),
        }
    by_margin = {}
    for share in args.caps:  # the drop variant at other caps (same out-of-fold probabilities)
        v = find_mislabelled(eye[noisy], oof.probs, False, args.filter_by, args.min_margin, share)
        kept = np.flatnonzero(~v.flagged)
        model = get_method(args.final_method)(**final_params).fit(
            rows([texts[i] for i in kept], noisy[kept]), valid, FitContext(seed=seed)
        )
        by_margin["none" if share is None else f"{share:g}"] = {
            **detection(v.flagged, flipped),
            **_scores(model.predict_proba(test_texts), test_y),
        }
    clean, noisy_acc, drop = (accuracy[k]["accuracy"] for k in ("clean", "noisy", "drop"))
    cost = clean - noisy_acc
    result = {
        "seed": seed,
        "n_per_class": args.n,
        "train_rows": len(texts),
        "flipped": len(flipped),
        "quality_method": args.quality_method,
        "quality_params": params,
        "valid_use": args.valid_use,
        "folds": oof.folds,
        "oof_s": oof_s,
        "oof_accuracy_vs_true": round(100 * float(np.mean(oof.probs.argmax(1) == truth)), 2),
        "filter_by": args.filter_by,
        "min_margin": args.min_margin,
        "max_share": cap,
        "oof_agreement_with_given": verdict.agreement,
        "cleanlab_estimate": verdict.estimated_issues,
        **found,
        "final_method": args.final_method,
        "test": accuracy,
        "noise_cost": round(cost, 2),
        "recovered_drop": round((drop - noisy_acc) / cost, 3) if cost > 0 else None,
        "recovered_relabel": round((accuracy["relabel"]["accuracy"] - noisy_acc) / cost, 3)
        if cost > 0
        else None,
        "sweep": sweep,
        "drop_by_cap": by_margin,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="labelled rows per label")
    parser.add_argument("--flip", type=float, default=0.1, help="share of training labels flipped")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--quality-method",
        default=resolve_method(QualityConfig()).method,
        help="default: what the stage's default (auto) uses on this machine",
    )
    parser.add_argument("--quality-params", default="{}", help="JSON constructor arguments")
    parser.add_argument(
        "--valid-use",
        default=QualityConfig().valid_use,
        choices=["fit", "early_stopping", "none"],
        help="quality.valid_use: the valid rows (N per label, correctly labelled) join every "
        "fold's training rows (fit) or are handed to the method for early stopping",
    )
    parser.add_argument("--filter-by", default="prune_by_noise_rate", choices=RULES)
    parser.add_argument("--min-margin", type=float, default=0.0)
    parser.add_argument(
        "--max-share",
        type=float,
        default=QualityConfig().max_flagged_share or 0.0,
        help="quality.max_flagged_share (default: the stage's); 0 = no cap",
    )
    parser.add_argument(
        "--caps",
        type=lambda v: None if v == "none" else float(v),
        nargs="*",
        default=list(CAPS),
        help="flagged-share caps whose drop variant is also fitted ('none': cleanlab's count); "
        "each is one more fit of --final-method",
    )
    parser.add_argument("--final-method", default="embed_lr")
    parser.add_argument("--final-params", default="{}", help="JSON constructor arguments")
    parser.add_argument("--test-rows", type=int, default=0, help="0 = the full test set")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument(
        "--reference-rows",
        type=int,
        nargs="*",
        default=[],
        help="yardstick only: add this many correctly labelled outside rows to every fold "
        "(one run per value) and print out-of-fold accuracy against flag precision/recall",
    )
    args = parser.parse_args(argv)
    if not (EMOTION / "train.csv").is_file():
        print(f"skipped: {EMOTION} not found (set LABEL_PIPELINE_DATASETS)")
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train_all, dev, test_df = read_emotion()
    if args.test_rows:
        test_df = test_df.sample(n=args.test_rows, random_state=0)
    frames = (train_all, dev, test_df)
    if args.reference_rows:
        curve = [row for seed in args.seeds for row in reference_curve(args, seed, frames)]
        print("\nmean over seeds (out-of-fold accuracy, precision, recall of the flags):")
        for m in args.reference_rows:
            cells = [r for r in curve if r["reference_rows"] == m]
            print(
                f"  reference_rows={m:5d} oof_acc="
                f"{np.mean([r['oof_accuracy_vs_true'] for r in cells]):.2f} precision="
                f"{np.mean([r['precision'] for r in cells]):.3f} recall="
                f"{np.mean([r['recall'] for r in cells]):.3f}"
            )
        reference = {"args": vars(args), "curve": curve}
        write_results("bench_label_issues_reference", reference, args.tag)
        return
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, frames)
        results.append(r)
        acc = " ".join(f"{k}={v['accuracy']}" for k, v in r["test"].items())
        print(
            f"seed={seed} {r['quality_method']} {r['folds']} oof_s={r['oof_s']} "
            f"oof_acc={r['oof_accuracy_vs_true']} | flipped={r['flipped']} flagged={r['flagged']} "
            f"precision={r['precision']} recall={r['recall']} "
            f"suggestion_right={r['suggestion_right']} | {r['final_method']} test accuracy: "
            f"{acc} | recovered drop={r['recovered_drop']} relabel={r['recovered_relabel']}",
            flush=True,
        )
    print("\nprecision / recall of other rules and margins (mean over seeds):")
    for key in results[0]["sweep"]:
        p = np.mean([r["sweep"][key]["precision"] for r in results])
        rc = np.mean([r["sweep"][key]["recall"] for r in results])
        fl = np.mean([r["sweep"][key]["flagged"] for r in results])
        print(f"  {key:28s} flagged={fl:6.1f} precision={p:.3f} recall={rc:.3f}")
    noisy_mean = np.mean([r["test"]["noisy"]["accuracy"] for r in results])
    clean_mean = np.mean([r["test"]["clean"]["accuracy"] for r in results])
    print(
        f"\ndrop with other caps on the flagged share ({args.filter_by}; mean over seeds; "
        f"clean {clean_mean:.2f}, noisy {noisy_mean:.2f}):"
    )
    for key in results[0]["drop_by_cap"]:
        cells = {
            k: np.mean([r["drop_by_cap"][key][k] for r in results])
            for k in ("flagged", "precision", "recall", "accuracy")
        }
        rec = (cells["accuracy"] - noisy_mean) / (clean_mean - noisy_mean)
        print(
            f"  cap {key:5s} flagged={cells['flagged']:6.1f} precision={cells['precision']:.3f}"
            f" recall={cells['recall']:.3f} drop accuracy={cells['accuracy']:.2f} "
            f"recovered={rec:.3f}"
        )
    mean = {
        k: round(float(np.mean([r[k] for r in results])), 3)
        for k in ("precision", "recall", "flagged", "oof_s", "oof_accuracy_vs_true")
    }
    for v in ("clean", "noisy", "drop", "relabel"):
        mean[f"{v}_accuracy"] = round(
            float(np.mean([r["test"][v]["accuracy"] for r in results])), 2
        )
    cost = mean["clean_accuracy"] - mean["noisy_accuracy"]
    for v in ("drop", "relabel"):
        mean[f"recovered_{v}"] = (
            round((mean[f"{v}_accuracy"] - mean["noisy_accuracy"]) / cost, 3) if cost > 0 else None
        )
    goal = {
        "found_half_at_precision_0.6": mean["recall"] >= 0.5 and mean["precision"] >= 0.6,
        "drop_recovers_half": mean["recovered_drop"] is not None and mean["recovered_drop"] >= 0.5,
    }
    print(f"\nmean over {len(results)} seed(s): {json.dumps(mean)}")
    print(f"goal: {json.dumps(goal)}")
    summary = {"args": vars(args), "mean": mean, "goal": goal, "runs": results}
    write_results("bench_label_issues", summary, args.tag)


if __name__ == "__main__":
    main()
