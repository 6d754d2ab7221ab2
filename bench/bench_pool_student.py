"""Does a student refitted on the average's pool labels lift the chosen model?

Reads a stage store kept by ``bench_issues.py --keep DIR`` with an unlabeled pool
(``--nlbse-pool``; ``DIR/<dataset>-<seed>/store``). At every training slice:

1. the teacher is the train stage's ``average`` run of the slice (its saved ``ensemble``
   model, calibrated as saved); it labels the unlabeled split (the pool);
2. a student (``--students``, default ``hybrid``) is fitted on the slice's labelled rows plus
   every pool row under the teacher's decision (its saved ``decision.json``) at row weight
   ``--weight``; nothing else about the student changes (its default parameters, seed 0);
3. compared on valid and test (one decision rule tuned on valid for every row, as in
   ``bench_ensemble_choice.py``): the teacher; the same method fitted by the train stage
   without the pool (when it ran); the student alone; ``teacher members + student``, the
   mean of the teacher's members' saved probabilities and the student's; and ``pick on
   valid``, whichever of the teacher and ``teacher members + student`` scores higher on valid
   (the rule a product step would have to use; ties keep the teacher).

For NLBSE stores (ids ``nlbse-<row>``) the teacher's accuracy on the pool is read from the
shared file's labels, which the pipeline never saw.

    .venv/bin/python bench/bench_pool_student.py /tmp/exp/keep23/nlbse-pool-1

Prints a markdown table and writes ``bench/results/bench_pool_student_<name>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from _paths import DATASETS, ROOT, only_one, setup_project
from bench_ensemble_choice import decided_scores

setup_project()


def _nlbse_pool_gold(ids: list[str], labels: list[str]) -> np.ndarray | None:
    """The NLBSE label of each pool row (hidden from the pipeline), or None elsewhere."""
    if not ids or not all(i.startswith("nlbse-") for i in ids):
        return None
    path = DATASETS / "nlbse24-train" / "issues_train.csv"
    csv.field_size_limit(1 << 30)
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    return np.array(
        [[int(rows[int(i.split("-")[1])]["label"] == lab) for lab in labels] for i in ids]
    )


def analyse(work: Path, students: list[str], weight: float, only_slices: list[str] | None) -> dict:
    from label_pipeline.choice import AVERAGE
    from label_pipeline.data import load_splits
    from label_pipeline.decision import apply_decision, load_decision
    from label_pipeline.devices import DeviceConfig, choose_device
    from label_pipeline.methods import FitContext, LabelledTexts, get_method
    from label_pipeline.methods.base import load_saved
    from label_pipeline.metrics import classification_metrics

    store = work / "store"
    train_dir = only_one(store, "train/*/runs.json", "train stage").parent
    split_dir = only_one(store, "split/*/splits", "split stage").parent
    info = json.loads((train_dir / "labels.json").read_text())
    labels, multi_label = info["labels"], bool(info.get("multi_label"))
    splits = load_splits(split_dir)
    if "unlabeled" not in splits or len(splits["unlabeled"]) == 0:
        sys.exit(f"{split_dir}: no unlabeled split; keep a run with a pool (--nlbse-pool)")
    slices = json.loads((split_dir / "slices.json").read_text())
    key = "micro_f1" if multi_label else "accuracy"
    device = choose_device(DeviceConfig(device="auto"))

    def y_of(name: str) -> np.ndarray:
        return np.array([[int(lab in set(r)) for lab in labels] for r in splits[name]["labels"]])

    vy, ty = y_of("valid"), y_of("test")
    tr = splits["train"]
    row_of = {i: n for n, i in enumerate(tr["id"])}
    tr_texts, tr_y = [str(t) for t in tr["text"]], y_of("train")
    pool = [str(t) for t in splits["unlabeled"]["text"]]
    pool_gold = _nlbse_pool_gold([str(i) for i in splits["unlabeled"]["id"]], labels)
    valid_texts, test_texts = (
        [str(t) for t in splits["valid"]["text"]],
        [str(t) for t in splits["test"]["text"]],
    )

    def score(vp: np.ndarray, tp: np.ndarray) -> dict:
        return decided_scores(vp, tp, vy, ty, labels, multi_label)

    out = []
    names = [s for s in slices if (train_dir / "runs" / AVERAGE / s / "model").exists()]
    for name in only_slices or names:
        avg_dir = train_dir / "runs" / AVERAGE / name
        if not (avg_dir / "model").exists():
            sys.exit(f"{avg_dir}: no saved average run for slice {name!r}; slices: {names}")
        members = json.loads((avg_dir / "fit.json").read_text())["params"]["members"]
        t0 = time.time()
        teacher = load_saved("ensemble", avg_dir / "model", device=device)
        pool_probs = teacher.predict_proba(pool)
        pool_y = apply_decision(pool_probs, load_decision(avg_dir))
        row: dict = {"slice": name, "members": members, "teacher_seconds": time.time() - t0}
        if pool_gold is not None:
            row["teacher_pool"] = float(
                classification_metrics(pool_gold, pool_probs, pool_y, labels, multi_label)[key]
            )
        row["rows"] = {
            "teacher (average)": score(
                np.load(avg_dir / "valid_probs.npy"), np.load(avg_dir / "test_probs.npy")
            )
        }
        gold_rows = [row_of[i] for i in slices[name]]
        for student in students:
            before = train_dir / "runs" / student / name
            if (before / "valid_probs.npy").exists():
                row["rows"][f"{student} (train stage, no pool labels)"] = score(
                    np.load(before / "valid_probs.npy"), np.load(before / "test_probs.npy")
                )
            data = LabelledTexts(
                [tr_texts[r] for r in gold_rows] + pool,
                np.vstack([tr_y[gold_rows], pool_y]),
                labels,
                multi_label,
                sample_weight=np.concatenate([np.ones(len(gold_rows)), np.full(len(pool), weight)]),
            )
            valid = LabelledTexts(valid_texts, vy, labels, multi_label)
            t1 = time.time()
            model = get_method(student)().fit(
                data, valid, FitContext(device=device, seed=0, unlabeled_texts=pool)
            )
            vp, tp = model.predict_proba(valid_texts), model.predict_proba(test_texts)
            row[f"{student}_seconds"] = time.time() - t1
            row["rows"][f"{student} student"] = score(vp, tp)
            mv = [np.load(train_dir / "runs" / m / name / "valid_probs.npy") for m in members]
            mt = [np.load(train_dir / "runs" / m / name / "test_probs.npy") for m in members]
            both = score(np.mean([*mv, vp], axis=0), np.mean([*mt, tp], axis=0))
            row["rows"][f"teacher members + {student} student"] = both
            teacher_row = row["rows"]["teacher (average)"]
            pick = both if both["valid"][key] > teacher_row["valid"][key] else teacher_row
            row["rows"][f"pick on valid ({student})"] = pick
        out.append(row)
        print(f"slice {name}: done in {time.time() - t0:.0f} s", flush=True)
    return {
        "labels": labels,
        "multi_label": multi_label,
        "metric": key,
        "weight": weight,
        "slices": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="DIR/<dataset>-<seed> kept by bench_issues.py --keep")
    ap.add_argument("--students", nargs="+", default=["hybrid"])
    ap.add_argument("--weight", type=float, default=0.5, help="row weight of a pool row")
    ap.add_argument("--slices", nargs="+", default=None, help="slice names (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = analyse(args.work, args.students, args.weight, args.slices)
    key = result["metric"]
    print(f"\n{args.work.name}: test {key} (valid in brackets)\n")
    rows = list(dict.fromkeys(r for s in result["slices"] for r in s["rows"]))
    print("| row | " + " | ".join(s["slice"] for s in result["slices"]) + " |")
    print("|---|" + "---|" * len(result["slices"]))
    for r in rows:
        cells = []
        for s in result["slices"]:
            m = s["rows"].get(r)
            cells.append(f"{m['test'][key]:.3f} ({m['valid'][key]:.3f})" if m else "–")
        print(f"| {r} | " + " | ".join(cells) + " |")
    if all("teacher_pool" in s for s in result["slices"]):
        print(
            "| teacher on the pool (hidden labels) | "
            + " | ".join(f"{s['teacher_pool']:.3f}" for s in result["slices"])
            + " |"
        )
    out = args.out or ROOT / "bench" / "results" / f"bench_pool_student_{args.work.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
