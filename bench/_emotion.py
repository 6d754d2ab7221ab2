"""The emotion dataset of the benchmarks: ``emotion/`` under the shared datasets
(``train.csv``, ``dev.csv``, ``test.csv``; columns ``text`` and ``labels``, the index of the
label in :data:`EMOTION_LABELS`), and its few-shot protocol: N labelled rows per label."""

from __future__ import annotations

from typing import Any

from harness import DATASETS

EMOTION = DATASETS / "emotion"
EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def read_emotion() -> tuple[Any, Any, Any]:
    """``train.csv``, ``dev.csv`` and ``test.csv`` as pandas data frames."""
    import pandas as pd

    return tuple(pd.read_csv(EMOTION / f"{name}.csv") for name in ("train", "dev", "test"))


def sample_per_label(df: Any, n: int, seed: int, keep_index: bool = False) -> Any:
    """``n`` rows of each label (fewer where a label has fewer), sampled with ``seed``,
    numbered from 0; with ``keep_index`` the rows' index in ``df`` is kept in a column
    ``index``."""
    import pandas as pd

    parts = [g.sample(n=min(n, len(g)), random_state=seed) for _, g in df.groupby("labels")]
    return pd.concat(parts).reset_index(drop=not keep_index)
