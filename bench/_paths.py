"""Where the benchmarks find the shared datasets: ``$LABEL_PIPELINE_DATASETS``, else
``../shared/datasets`` beside the project root (GoEmotions, emotion, NLU++)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LABEL_PIPELINE_DATASETS", ROOT.parent / "shared" / "datasets"))
