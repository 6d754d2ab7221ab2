"""Zero-shot scoring speed on this machine: rows/s of each backend on the embedded default
pool, and the batched NLI path next to the transformers zero-shot pipeline called row by row
with the same model, in one run.

NLI and fill-mask use randomly initialised models of realistic size built from a config
(BERT, 6 layers x 768 hidden, 30,522-word vocabulary: distilroberta-sized) with a WordPiece
tokenizer trained on the pool; the embedding backend uses the bundled all-MiniLM-L6-v2.

    .venv/bin/python bench/bench_zero_shot.py [--embed-rows 5000] [--nli-rows 128] ...

Writes bench/results/zero_shot_speed.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness import write_results  # noqa: E402

from label_pipeline.devices import choose_device  # noqa: E402
from label_pipeline.models import resolve_model  # noqa: E402
from label_pipeline.zeroshot import get_backend  # noqa: E402

DATA = ROOT / "data" / "goemotions-ekman-sample.csv"


def load_pool() -> tuple[list[str], list[str]]:
    """Unlabeled texts of the embedded default data and its label names."""
    texts, labels = [], set()
    with open(DATA, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["labels"].strip():
                labels.update(x for x in row["labels"].split(";") if x)
            else:
                texts.append(row["text"])
    return texts, sorted(labels)


def build_model(out: Path, kind: str, corpus: list[str], layers: int) -> Path:
    """A random BERT of realistic size: NLI head (entailment/neutral/contradiction) or MLM."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from label_pipeline.testing import train_wordpiece_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = train_wordpiece_tokenizer(out, corpus, vocab_size=8000)
    tok.model_max_length = 512
    tok.save_pretrained(str(out))
    id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    cls = BertForSequenceClassification if kind == "nli" else BertForMaskedLM
    cls(config).save_pretrained(str(out))
    return out


def rate(fn, n_rows: int) -> tuple[float, float]:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    return n_rows / seconds, seconds


def time_backend(backend, texts: list[str], labels: list[str], n: int, warm: int, digits: int):
    """Score ``warm`` rows to warm up, then time ``n`` rows: (rows/s, seconds, result entry)."""
    backend.score(texts[:warm], labels, labels, True)
    rps, sec = rate(lambda: backend.score(texts[:n], labels, labels, True), n)
    return rps, sec, {"rows": n, "seconds": round(sec, 2), "rows_per_s": round(rps, digits)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embed-rows", type=int, default=5000)
    p.add_argument("--nli-rows", type=int, default=128, help="rows for the batched NLI path")
    p.add_argument("--pipeline-rows", type=int, default=32, help="rows for the row-by-row pipeline")
    p.add_argument("--fill-rows", type=int, default=1000)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    import torch
    from transformers import pipeline

    texts, labels = load_pool()
    device = choose_device()
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "device": device.describe(),
        },
        "pool_rows": len(texts),
        "labels": labels,
        "model_size": f"BERT {args.layers} layers x 768 hidden, vocab 30522 (random weights)",
        "backends": {},
    }
    print(f"pool: {len(texts)} unlabeled rows, {len(labels)} labels; device {device.describe()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-zero-shot-"))

    # embedding
    n = min(args.embed_rows, len(texts))
    emb = get_backend("embedding")(
        resolve_model("all-MiniLM-L6-v2"), device, batch_size=args.batch_size
    )
    rps, sec, results["backends"]["embedding"] = time_backend(emb, texts, labels, n, 8, 1)
    print(f"embedding (all-MiniLM-L6-v2): {n} rows in {sec:.1f}s = {rps:.1f} rows/s")

    # nli: batched backend vs the transformers pipeline, row by row, same model
    nli_dir = build_model(tmp / "nli", "nli", texts, args.layers)
    nli = get_backend("nli")(nli_dir, device, batch_size=args.batch_size)
    n_nli = min(args.nli_rows, len(texts))
    rps, sec, results["backends"]["nli"] = time_backend(nli, texts, labels, n_nli, 4, 2)
    print(f"nli batched: {n_nli} rows x {len(labels)} labels in {sec:.1f}s = {rps:.2f} rows/s")

    n_pipe = min(args.pipeline_rows, n_nli)
    pipe = pipeline(
        "zero-shot-classification",
        model=str(nli_dir),
        device=0 if device.device == "cuda" else "cpu",
    )
    template = nli.template
    pipe(texts[0], candidate_labels=labels, hypothesis_template=template, multi_label=True)

    def row_by_row() -> None:
        for t in texts[:n_pipe]:
            pipe(t, candidate_labels=labels, hypothesis_template=template, multi_label=True)

    pipe_rps, pipe_sec = rate(row_by_row, n_pipe)
    # the batched path on exactly the pipeline's rows, for a like-for-like ratio
    same_rps, same_sec = rate(lambda: nli.score(texts[:n_pipe], labels, labels, True), n_pipe)
    results["nli_vs_pipeline"] = {
        "rows": n_pipe,
        "pipeline_row_by_row": {"seconds": round(pipe_sec, 2), "rows_per_s": round(pipe_rps, 2)},
        "batched_same_rows": {"seconds": round(same_sec, 2), "rows_per_s": round(same_rps, 2)},
        "batched_large_subset_rows_per_s": round(rps, 2),
        "speedup_same_rows": round(same_rps / pipe_rps, 2),
        "speedup_large_subset": round(rps / pipe_rps, 2),
    }
    print(
        f"nli pipeline row by row: {n_pipe} rows in {pipe_sec:.1f}s = {pipe_rps:.2f} rows/s; "
        f"batched on the same rows: {same_rps:.2f} rows/s -> {same_rps / pipe_rps:.2f}x "
        f"({rps / pipe_rps:.2f}x with the {n_nli}-row batch)"
    )

    # fill-mask
    mlm_dir = build_model(tmp / "mlm", "mlm", texts, args.layers)
    fm = get_backend("fill_mask")(mlm_dir, device, batch_size=args.batch_size)
    n_fm = min(args.fill_rows, len(texts))
    rps, sec, results["backends"]["fill_mask"] = time_backend(fm, texts, labels, n_fm, 4, 1)
    print(f"fill_mask: {n_fm} rows in {sec:.1f}s = {rps:.1f} rows/s")

    write_results("zero_shot_speed", results)
    return results


if __name__ == "__main__":
    main()
