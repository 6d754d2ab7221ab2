"""The benchmarks' shared harness: where they find the shared datasets
(``$LABEL_PIPELINE_DATASETS``, else ``../shared/datasets`` beside the project root: GoEmotions,
emotion, NLU++, NLBSE'24), the project on ``sys.path`` and offline (:func:`setup_project`),
the result files (``bench/results/<name><tag>.json``, :func:`write_results`), and a stage's
directory in a stage store kept by ``bench_issues.py --keep`` (:func:`only_one`) and its split
stage's rows (:func:`split_rows`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LABEL_PIPELINE_DATASETS", ROOT.parent / "shared" / "datasets"))
#: where every benchmark writes its JSON results (git-ignored)
RESULTS = ROOT / "bench" / "results"


def setup_project() -> None:
    """Put the project root first on ``sys.path`` (``label_pipeline``, ``tasks``) and run
    offline: ``HF_HUB_OFFLINE=1`` and ``TOKENIZERS_PARALLELISM=false`` unless already set."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def only_one(store: Path, pattern: str, what: str) -> Path:
    """The one path under ``store`` matching ``pattern`` (a stage's output directory in a
    kept stage store); exits naming ``what`` when there are none or several."""
    found = sorted(store.glob(pattern))
    if len(found) != 1:
        sys.exit(f"expected one {what} ({store}/{pattern}), found {len(found)}")
    return found[0]


def split_rows(split_dir: Path) -> dict[str, Any]:
    """A split stage's rows, for a refit beside a kept store: ``labels``, ``multi_label``,
    ``slices``, ``valid`` and ``test`` as ``LabelledTexts``, the unlabeled ``pool`` (None
    without one), ``row_of`` (a training id's position in the train split) and
    ``slice_rows(ids)``, the training rows of ``ids`` in that order."""
    from label_pipeline.data import label_matrix, load_slices, load_splits, read_label_info
    from label_pipeline.methods import LabelledTexts

    labels, multi_label = read_label_info(split_dir)
    splits = load_splits(split_dir)
    tr = splits["train"]

    def lt(ds: Any) -> LabelledTexts:
        return LabelledTexts(
            [str(t) for t in ds["text"]],
            label_matrix([list(x) for x in ds["labels"]], labels),
            labels,
            multi_label,
        )

    train_all = lt(tr)
    row_of = {str(i): k for k, i in enumerate(tr["id"])}
    unlabeled = splits.get("unlabeled")
    return {
        "labels": labels,
        "multi_label": multi_label,
        "slices": load_slices(split_dir),
        "valid": lt(splits["valid"]),
        "test": lt(splits["test"]),
        "pool": [str(t) for t in unlabeled["text"]] if unlabeled is not None else None,
        "row_of": row_of,
        "slice_rows": lambda ids: LabelledTexts(
            [train_all.texts[row_of[i]] for i in ids],
            train_all.y[[row_of[i] for i in ids]],
            labels,
            multi_label,
        ),
    }


def results_path(name: str, tag: str = "") -> Path:
    """``bench/results/<name><tag>.json``."""
    return RESULTS / f"{name}{tag}.json"


def write_results(name: str, data: Any, tag: str = "", indent: int = 2) -> Path:
    """Write ``data`` as JSON to :func:`results_path` (the folder made when missing) and say
    where; returns the path."""
    out = results_path(name, tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=indent, default=str))
    print(f"results: {out}", flush=True)
    return out
