"""A tiny three-label issue vocabulary (``LABELS``, ``WORDS``) and CSV for the integration
tests."""

from __future__ import annotations

import random
from pathlib import Path

LABELS = ["bug", "feature", "question"]
WORDS = {
    "bug": "crash error broken fails exception traceback wrong",
    "feature": "add support request would like option new",
    "question": "how why what help wondering possible explain",
}


def tiny_csv(path: Path, n_labelled: int = 60, n_unlabeled: int = 40) -> Path:
    """``n_labelled`` labelled rows then ``n_unlabeled`` rows with an empty label, each made of
    four of its label's words and three random tokens."""
    rng = random.Random(0)
    lines = ["text,labels"]
    for i in range(n_labelled + n_unlabeled):
        lab = LABELS[i % 3]
        words = rng.sample(WORDS[lab].split(), 4) + [f"w{rng.randint(0, 10_000)}" for _ in range(3)]
        lines.append(f"{' '.join(words)} item {i},{lab if i < n_labelled else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path
