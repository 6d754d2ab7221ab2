"""Does averaging several fits of a model method, each with its own seed, beat one fit?

On NLBSE'24 issue reports, split as ``bench_long_text.py`` splits them (``--rows`` drawn,
a third test, a sixth valid, the rest a training pool; default-cleaned text with the
``repo`` field), each draw (``--draws``) samples ``--k`` rows per class from the pool
(``bench_long_text.draws``) and fits every method in ``--methods`` ``--fits`` times on
those same rows with the seeds ``draw``, ``draw + 10``, ``draw + 20``, ... (the seed sets the
initialisation of new weights, dropout and the batch order). Reported per draw: each fit's
valid and test accuracy, their mean, and the accuracy of the mean of the fits' probabilities
(the seed ensemble). Methods see no unlabeled pool (``prototype`` trains without its
self-training rounds). The first fit of each draw is the fit ``bench_long_text.py`` makes.

    .venv/bin/python bench/bench_seed_ensemble.py --methods finetune prototype --k 64

Writes ``bench/results/bench_seed_ensemble.json`` (after every fit: a run cut short keeps
what it measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _paths import ROOT, setup_project

setup_project()

import bench_long_text as lt  # noqa: E402

from label_pipeline.devices import choose_device  # noqa: E402
from label_pipeline.methods import REGISTRY  # noqa: E402
from label_pipeline.models import DEFAULT_ENCODER, resolve_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_seed_ensemble.json"


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["finetune", "prototype"])
    ap.add_argument("--k", type=int, default=64, help="labelled rows per class")
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fits", type=int, default=3, help="fits per draw (seeds draw + 10 j)")
    ap.add_argument("--rows", type=int, default=900)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if not lt.NLBSE.is_file():
        print(f"skipped: {lt.NLBSE} not found (set LABEL_PIPELINE_DATASETS)")
        return
    unknown = sorted(set(args.methods) - set(REGISTRY))
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; known: {sorted(REGISTRY)}")
    data = lt.load(args.rows, seed=0)
    texts, _ = lt.clean_texts(data, {})
    valid, test = lt.labelled(data, texts, data["valid"]), lt.labelled(data, texts, data["test"])
    y = {"valid": data["y"][data["valid"]], "test": data["y"][data["test"]]}
    device = choose_device()
    encoder = str(resolve_model(DEFAULT_ENCODER, purpose="bench"))
    results: dict = {"k": args.k, "rows": args.rows, "fits": args.fits, "runs": {}}
    print(
        f"NLBSE: {len(test)} test / {len(valid)} valid rows, K={args.k} per class; "
        "cells: test accuracy (valid)"
    )
    for method in args.methods:
        for _, draw, idx in lt.draws(data, [args.k], args.draws):
            probs: list[dict[str, np.ndarray]] = []
            for j in range(args.fits):
                t0 = time.time()
                train = lt.labelled(data, texts, idx)
                model = lt.fit_method(method, {}, train, valid, draw + 10 * j, device, encoder)
                probs.append(
                    {
                        "valid": model.predict_proba(valid.texts),
                        "test": model.predict_proba(test.texts),
                    }
                )
                seconds = time.time() - t0
                fits = {s: [accuracy(p[s], y[s]) for p in probs] for s in ("valid", "test")}
                ens = {s: accuracy(np.mean([p[s] for p in probs], axis=0), y[s]) for s in y}
                results["runs"][f"{method}/draw{draw}"] = {
                    "fits_test": fits["test"],
                    "fits_valid": fits["valid"],
                    "mean_fit_test": float(np.mean(fits["test"])),
                    "ensemble_test": ens["test"],
                    "ensemble_valid": ens["valid"],
                    "last_fit_seconds": round(seconds, 1),
                }
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
            r = results["runs"][f"{method}/draw{draw}"]
            cells = " ".join(
                f"{t:.3f} ({v:.3f})" for t, v in zip(r["fits_test"], r["fits_valid"], strict=True)
            )
            print(
                f"  {method:<10} draw {draw}: fits {cells} | mean of fits {r['mean_fit_test']:.3f}"
                f" | ensemble {r['ensemble_test']:.3f} ({r['ensemble_valid']:.3f})",
                flush=True,
            )
        mine = [v for n, v in results["runs"].items() if n.startswith(method + "/")]
        gain = float(np.mean([r["ensemble_test"] - r["mean_fit_test"] for r in mine]))
        results.setdefault("ensemble_minus_mean_fit", {})[method] = gain
        print(f"  {method}: ensemble minus the mean fit, mean over draws {gain:+.3f}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
