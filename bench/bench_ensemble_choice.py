"""Would shipping an average of the trained runs beat the evaluate stage's single choice?

Reads a stage store kept by ``bench_issues.py --keep DIR`` (``DIR/<dataset>-<seed>/store``) and,
at every training slice, compares on valid and test:

- ``chosen``: the evaluate stage's choice (``metrics.json`` ``chosen_per_slice``: the best run
  on valid, never below the best baseline);
- ``mean_top3``: the average of the probabilities of the three runs best on valid, shipped only
  when its valid score is not below the best baseline's (else ``chosen``);
- ``mean_above_baselines``: the average of every run whose valid score is not below the best
  baseline's;
- ``mean_all``: the average of every run;
- ``chosen_now``: the choice the current code makes from the same kept runs (the train
  stage's ``average`` of the slice, ``train.average_top``, and the evaluate stage's
  ``prefer_average`` and ``single_over_average_p``; see :func:`rechoose`), so a store kept
  before either existed shows what the default config now ships.

Nothing is refitted: the train stage's saved probabilities are averaged (``valid_probs.npy``
are cross-fitted, ``test_probs.npy`` from the calibrator fitted on all of valid), and every row,
the single runs too, is decided the same way: ``label_pipeline.decision.tune_decision`` on
valid with one global threshold (argmax for single-label), scored by
``label_pipeline.metrics.classification_metrics`` (accuracy or micro-F1, and macro-F1). The
members and rules are fixed here, not tuned on test; one dataset and seed is evidence for
trying the rule, not for adopting it.

    .venv/bin/python bench/bench_ensemble_choice.py /tmp/nlbse-work/nlbse-0

Prints a markdown table and writes ``bench/results/bench_ensemble_choice_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _paths import ROOT, only_one, setup_project

setup_project()


def decided_scores(
    valid_probs: np.ndarray,
    test_probs: np.ndarray,
    vy: np.ndarray,
    ty: np.ndarray,
    labels: list[str],
    multi_label: bool,
) -> dict:
    """One decision rule tuned on valid (``tune_decision``, one global threshold; argmax for
    single-label) applied to both splits: ``{"valid": {...}, "test": {...}}``, each with
    accuracy (single-label) or micro-F1, and macro-F1."""
    from label_pipeline.decision import apply_decision, tune_decision
    from label_pipeline.metrics import classification_metrics

    key = "micro_f1" if multi_label else "accuracy"
    decision = tune_decision(valid_probs, vy, multi_label, "global")

    def metrics(p: np.ndarray, y: np.ndarray) -> dict:
        m = classification_metrics(y, p, apply_decision(p, decision), labels, multi_label)
        return {k: float(m[k]) for k in (key, "macro_f1")}

    return {"valid": metrics(valid_probs, vy), "test": metrics(test_probs, ty)}


def analyse(store: Path) -> dict:
    from label_pipeline.choice import AVERAGE, BASELINES
    from label_pipeline.data import load_splits

    train_dir = only_one(store, "train/*/runs.json", "train stage").parent
    eval_dir = only_one(store, "evaluate/*/metrics.json", "evaluate stage").parent
    split_dir = only_one(store, "split/*/splits", "split stage").parent
    info = json.loads((train_dir / "labels.json").read_text())
    labels, multi_label = info["labels"], bool(info.get("multi_label"))
    splits = load_splits(split_dir)

    def y_of(name: str) -> np.ndarray:
        rows = splits[name]["labels"]
        return np.array([[int(lab in set(r)) for lab in labels] for r in rows])

    vy, ty = y_of("valid"), y_of("test")
    key = "micro_f1" if multi_label else "accuracy"
    runs = json.loads((train_dir / "runs.json").read_text())
    chosen = {
        c["slice"]: c
        for c in json.loads((eval_dir / "metrics.json").read_text())["chosen_per_slice"]
    }
    out = []
    for name in dict.fromkeys(r["slice"] for r in runs):
        here = [r for r in runs if r["slice"] == name and not r.get("fallback")]
        probs = {
            r["method"]: (
                np.load(train_dir / r["dir"] / "valid_probs.npy"),
                np.load(train_dir / r["dir"] / "test_probs.npy"),
            )
            for r in here
        }

        def score(members: list[str], probs: dict = probs) -> dict:
            v = np.mean([probs[m][0] for m in members], axis=0)
            t = np.mean([probs[m][1] for m in members], axis=0)
            return {"members": members, **decided_scores(v, t, vy, ty, labels, multi_label)}

        single = {m: score([m]) for m in probs}
        # the train stage's own average run is a row of its own, never a member here
        by_valid = sorted(
            (m for m in probs if m != AVERAGE), key=lambda m: -single[m]["valid"][key]
        )
        floor = max((single[m]["valid"][key] for m in probs if m in BASELINES), default=-1.0)
        c = chosen.get(name, {})
        pick = c.get("method")
        rules = {"chosen": single[pick] if pick in single else None}
        top3 = score(by_valid[:3])
        rules["mean_top3"] = top3 if top3["valid"][key] >= floor - 1e-12 else rules["chosen"]
        above = [m for m in by_valid if single[m]["valid"][key] >= floor - 1e-12]
        rules["mean_above_baselines"] = score(above)
        rules["mean_all"] = score(by_valid)
        out.append({"slice": name, "rows": c.get("size"), "runs": single, "rules": rules})
    now = rechoose(train_dir, split_dir, vy, ty, labels, multi_label)
    for entry in out:
        entry["rules"]["chosen_now"] = now.get(entry["slice"])
    return {"labels": labels, "multi_label": multi_label, "metric": key, "slices": out}


def rechoose(
    train_dir: Path,
    split_dir: Path,
    vy: np.ndarray,
    ty: np.ndarray,
    labels: list[str],
    multi_label: bool,
) -> dict[str, dict]:
    """The choice per slice that the current train and evaluate code makes from the kept
    runs: ``tasks.train.average_run`` adds each slice's ``average`` (``TrainConfig()``
    defaults, the kept run's seed and calibration), ``tasks.evaluate.chosen_per_slice`` picks
    with ``EvaluateConfig()`` defaults. Nothing is refitted: the kept runs are linked into a
    temporary stage directory beside the averages. Without a valid split, none."""
    import tempfile

    from label_pipeline.choice import AVERAGE, average_members_of, chosen_per_slice
    from tasks.evaluate import EvaluateConfig, evaluate_runs
    from tasks.train import TrainConfig, average_run

    kept_cfg = json.loads((train_dir / "manifest.json").read_text()).get("config", {})
    cfg = TrainConfig(
        seed=kept_cfg.get("seed", 0),
        calibration=kept_cfg.get("calibration", "auto"),
        threshold=kept_cfg.get("threshold", "global"),
    )
    ev = EvaluateConfig()
    kept = [r for r in json.loads((train_dir / "runs.json").read_text()) if r["method"] != AVERAGE]
    with tempfile.TemporaryDirectory(prefix="rechoose-") as tmp:
        stage = Path(tmp)
        for r in kept:
            (stage / r["dir"]).parent.mkdir(parents=True, exist_ok=True)
            (stage / r["dir"]).symlink_to(train_dir / r["dir"], target_is_directory=True)
        rows = list(kept)
        for name in dict.fromkeys(r["slice"] for r in kept):
            here = [r for r in kept if r["slice"] == name]
            avg = average_run(stage, here, cfg, vy, labels, multi_label, [])
            if avg is not None:
                rows.append(avg)
        runs = evaluate_runs(stage, rows, vy, ty, labels, multi_label)
        per_slice = chosen_per_slice(
            runs,
            ev.select_by,
            ev.select_tolerance,
            len(vy),
            ev.prefer_average,
            vy,
            ev.single_over_average_p,
        )
        key = "micro_f1" if multi_label else "accuracy"
        out = {}
        for c in per_slice:
            run = next(r for r in runs if r["slice"] == c["slice"] and r["method"] == c["method"])
            members = [c["method"]]
            if c["method"] == AVERAGE:
                members = [f"average of {'+'.join(average_members_of(run))}"]
            out[c["slice"]] = {
                "members": members,
                "valid": {k: run["valid"][k] for k in (key, "macro_f1")},
                "test": {k: run["test"][k] for k in (key, "macro_f1")},
                "reason": c["reason"],
            }
    return out


def table(result: dict) -> str:
    key = result["metric"]
    head = [s["slice"] for s in result["slices"]]
    lines = [
        f"| test {key} / macro-F1 (valid {key}) | " + " | ".join(map(str, head)) + " |",
        "|---|" + "---|" * len(head),
    ]
    names = list(result["slices"][0]["runs"]) + list(result["slices"][0]["rules"])
    for n in names:
        cells = []
        for s in result["slices"]:
            r = s["runs"].get(n) or s["rules"].get(n)
            if r is None:
                cells.append("–")
                continue
            members = "" if n in s["runs"] else f" [{'+'.join(r['members'])}]"
            cells.append(
                f"{r['test'][key]:.3f}/{r['test']['macro_f1']:.3f} ({r['valid'][key]:.3f})"
                + members
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kept", help="a run directory kept by bench_issues.py --keep")
    args = parser.parse_args(argv)
    kept = Path(args.kept)
    result = analyse(kept / "store")
    print(table(result))
    print("\nwhy, per slice (chosen_now):")
    for entry in result["slices"]:
        now = entry["rules"].get("chosen_now")
        if now:
            print(f"- {entry['slice']}: {now['reason']}")
    out = ROOT / "bench" / "results" / f"bench_ensemble_choice_{kept.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
