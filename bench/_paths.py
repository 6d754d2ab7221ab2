"""Where the benchmarks find the shared datasets: ``$LABEL_PIPELINE_DATASETS``, else
``../shared/datasets`` beside the project root (GoEmotions, emotion, NLU++); and a stage's
directory in a stage store kept by ``bench_issues.py --keep``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LABEL_PIPELINE_DATASETS", ROOT.parent / "shared" / "datasets"))


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
