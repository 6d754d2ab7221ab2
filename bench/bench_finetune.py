"""Fine-tuning benchmarks.

``default``: time a default ``finetune`` fit on the embedded default data (300 train / 150 valid
rows sampled with the seed, MiniLM-L6) and report test micro/macro-F1 on the other 150 rows.

``emotion``: few-label quality on ../shared/datasets/emotion (single-label, 6 labels): N
labelled rows per class sampled from train.csv with each seed, a validation set of N rows per
class from dev.csv, test accuracy and macro-F1 on the full test.csv (2000 rows) for ``prototype``,
``finetune`` and ``setfit`` from the bundled all-MiniLM-L6-v2; ``--pool`` other train.csv rows
(labels dropped) are the unlabeled pool the self-training methods use (``prototype`` by
default). The labelled rows are balanced and the pool is not, so by default (``--label-shift
pool``, the train stage's ``train.label_shift: pool``) each model's test probabilities are
reweighted to the pool's label frequencies estimated from its own valid and pool predictions;
the scores without that reweighting are printed beside them. For ``ensemble`` each member's
scores and for ``distill`` the teacher's are printed too, from the same fit. ``--eval
dev-rest`` scores on the dev.csv rows not drawn as valid instead of test.csv, for choosing
settings without looking at the test set.

    .venv/bin/python bench/bench_finetune.py default
    .venv/bin/python bench/bench_finetune.py emotion --n 8 64 --seeds 0 1 2

Prints one line per run and writes ``bench/results/bench_finetune_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emotion import EMOTION_LABELS, read_emotion, sample_per_label  # noqa: E402
from harness import ROOT, setup_project, write_results  # noqa: E402

setup_project()


def _rows(texts, y, names, multi):
    from label_pipeline.methods import LabelledTexts

    return LabelledTexts(list(texts), np.asarray(y), names, multi)


def _scores(p: np.ndarray, y: np.ndarray, multi: bool) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    if multi:
        pred = (p >= 0.5).astype(int)
        return {
            "micro_f1": round(100 * f1_score(y, pred, average="micro", zero_division=0), 2),
            "macro_f1": round(100 * f1_score(y, pred, average="macro", zero_division=0), 2),
        }
    yi, pi = y.argmax(1), p.argmax(1)
    return {
        "accuracy": round(100 * accuracy_score(yi, pi), 2),
        "macro_f1": round(100 * f1_score(yi, pi, average="macro", zero_division=0), 2),
    }


def _fit_eval(
    method: str,
    params: dict,
    train,
    valid,
    test,
    seed: int,
    pool=None,
    label_shift=False,
    encoder: str | None = None,
) -> dict:
    from label_pipeline.label_shift import estimate_label_shift
    from label_pipeline.methods import FitContext, get_method

    ctx = FitContext(seed=seed, unlabeled_texts=pool, encoder=encoder)
    t0 = time.time()
    m = get_method(method)(**params).fit(train, valid, ctx)
    fit_s = time.time() - t0
    shift_pool = pool if label_shift and pool and not test.multi_label else None

    def scores(model) -> dict:
        """Test scores; with label shift (the train stage's train.label_shift=pool: the pool's
        label frequencies estimated from valid + pool predictions) the reweighted ones, the
        plain ones under ``without_label_shift``; ``predict_s``: the test prediction."""
        t0 = time.time()
        p = model.predict_proba(test.texts)
        predict_s = round(time.time() - t0, 1)
        plain = _scores(p, test.y, test.multi_label)
        if shift_pool is None:
            return {"predict_s": predict_s, **plain}
        shift = estimate_label_shift(
            model.predict_proba(valid.texts),
            valid.y,
            model.predict_proba(shift_pool),
            model.source_prior(train),
        )
        return {
            "predict_s": predict_s,
            **_scores(shift.apply(p), test.y, test.multi_label),
            "label_shift": shift.to_json(),
            "without_label_shift": plain,
        }

    out = {
        "method": method,
        "params": params,
        "seed": seed,
        "train_rows": len(train),
        "fit_s": round(fit_s, 1),
        **scores(m),
    }
    teacher = getattr(m, "teacher_", None)
    if teacher is not None and teacher is not getattr(m, "model_", None):
        # distill: the teacher's own test scores, from the same fit
        out["teacher"] = {k: v for k, v in scores(teacher).items() if k != "predict_s"}
    for name, member in getattr(m, "members_", {}).items():
        # an ensemble: each member's own test scores, from the same fit
        member_out = scores(member)
        member_out.pop("label_shift", None)
        member_out.pop("predict_s")
        member_out["fit_s"] = ctx.info["members"][name]["fit_seconds"]
        out.setdefault("members", {})[name] = member_out
    for key in ("self_training", "diverged", "distill"):
        if key in ctx.info:
            out[key] = ctx.info[key]
    return out


def bench_default(args) -> list[dict]:
    import pandas as pd

    from label_pipeline.data import label_matrix

    df = pd.read_csv(ROOT / "data" / "goemotions-ekman-sample.csv").fillna("")
    lab = df[df["labels"] != ""].reset_index(drop=True)
    names = sorted({x for s in lab["labels"] for x in s.split(";")})
    y = label_matrix([s.split(";") for s in lab["labels"]], names)
    perm = np.random.default_rng(args.seeds[0]).permutation(len(lab))
    parts = [perm[:300], perm[300:450], perm[450:]]
    train, valid, test = (_rows(lab["text"][i], y[i], names, True) for i in parts)
    return [_fit_eval("finetune", {}, train, valid, test, args.seeds[0])]


def bench_emotion(args) -> list[dict]:
    train_all, dev, test_df = read_emotion()
    if args.test_rows:
        test_df = test_df.sample(n=args.test_rows, random_state=0)
    eye = np.eye(len(EMOTION_LABELS), dtype=np.int64)

    def rows(df):
        return _rows(df["text"], eye[df["labels"].to_numpy()], EMOTION_LABELS, False)

    test = rows(test_df)
    results = []
    for n in args.n:
        for seed in args.seeds:
            train = rows(sample_per_label(train_all, n, seed))
            valid_df = sample_per_label(dev, max(n, 8), seed)
            valid = rows(valid_df)
            if args.eval == "dev-rest":
                # choosing a design: score on the dev rows not in valid, never on test.csv
                test = rows(dev[~dev["text"].isin(set(valid_df["text"]))])
            pool = None
            if args.pool:
                pool = list(train_all.sample(n=args.pool, random_state=seed + 1000)["text"])
            for method in args.methods:
                params = json.loads(args.params.get(method, "{}")) if args.params else {}
                r = _fit_eval(
                    method,
                    params,
                    train,
                    valid,
                    test,
                    seed,
                    pool,
                    args.label_shift == "pool",
                    args.encoder_dir,
                )
                r["n_per_class"] = n
                r["encoder"] = args.encoder
                results.append(r)
                print(json.dumps(r), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["default", "emotion"])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 64], help="rows per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["prototype", "finetune", "setfit"])
    parser.add_argument(
        "--param", action="append", default=[], help='METHOD=JSON params, e.g. setfit={"epochs":2}'
    )
    parser.add_argument(
        "--pool", type=int, default=4000, help="unlabeled train rows for self-training (0 = none)"
    )
    parser.add_argument(
        "--label-shift",
        choices=["none", "pool"],
        default="pool",
        help="pool: reweight probabilities to the pool's estimated label frequencies "
        "(train.label_shift); both scores are printed",
    )
    parser.add_argument("--test-rows", type=int, default=0, help="0 = the full test set")
    parser.add_argument(
        "--eval",
        choices=["test", "dev-rest"],
        default="test",
        help="emotion: score on test.csv, or on the dev.csv rows not drawn as valid (for "
        "choosing settings without looking at test.csv)",
    )
    parser.add_argument(
        "--encoder",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="the sentence encoder every method starts from (a model reference; "
        "sentence-transformers/all-mpnet-base-v2 needs `make mpnet`)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args(argv)
    args.params = dict(p.split("=", 1) for p in args.param)
    from label_pipeline.models import resolve_model

    args.encoder_dir = str(resolve_model(args.encoder, "bench_finetune --encoder"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = bench_default(args) if args.mode == "default" else bench_emotion(args)
    for r in results:
        keys = ("method", "n_per_class", "seed", "train_rows", "fit_s", "predict_s")
        head = " ".join(f"{k}={r[k]}" for k in keys if k in r)
        score = " ".join(f"{k}={r[k]}" for k in ("accuracy", "micro_f1", "macro_f1") if k in r)
        if "without_label_shift" in r:
            score += (
                " (without label shift: "
                + " ".join(f"{k}={v}" for k, v in r["without_label_shift"].items())
                + ")"
            )
        print(f"{head} | {score}")
        if "teacher" in r:
            print(f"    teacher: {json.dumps(r['teacher'])}")
        for name, ms in r.get("members", {}).items():
            print(f"    member {name}: {json.dumps(ms)}")
    for method in sorted({r["method"] for r in results}):
        for n in sorted({r.get("n_per_class", 0) for r in results}):
            sel = [r for r in results if r["method"] == method and r.get("n_per_class", 0) == n]
            if len(sel) > 1:
                mean = {
                    k: round(float(np.mean([r[k] for r in sel])), 2)
                    for k in ("accuracy", "macro_f1")
                    if k in sel[0]
                }
                line = f"mean {method} N={n} over {len(sel)} seeds: {mean}"
                if all("without_label_shift" in r for r in sel):
                    raw = {
                        k: round(float(np.mean([r["without_label_shift"][k] for r in sel])), 2)
                        for k in ("accuracy", "macro_f1")
                    }
                    line += f" (without label shift: {raw})"
                print(line)
    write_results(f"bench_finetune_{args.mode}", results, args.tag)


if __name__ == "__main__":
    main()
