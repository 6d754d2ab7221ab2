"""Benchmark of the ``adapt`` stage (masked-LM domain adaptation).

1. Training throughput with the bundled all-MiniLM-L6-v2, side by side in one process:
   packed blocks (the stage's way), packed blocks with the full-vocabulary head, and
   unpacked pad-to-longest batches of the same texts. Real (non-padding) tokens per second,
   the padding fraction of each layout, and peak RSS.
2. Held-out perplexity before vs after with the default budget (``AdaptConfig()``) on the
   embedded default data (300 train + ~5,000 unlabeled texts).
3. The same on a pool of 20,000 GoEmotions rows (``../shared/datasets/goemotions/ekman/
   train.tsv``) with a budget that finishes within 10 minutes on a 2-core CPU.

Run: ``.venv/bin/python bench/bench_adapt.py`` (``--quick`` for part 1 only; ``--help``).
Writes ``bench/results/adapt.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import DATASETS, RESULTS, write_results  # noqa: E402

sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from label_pipeline.mlm import (  # noqa: E402
    load_masked_lm,
    make_collator,
    masked_loss,
    mlm_head,
    pack_texts,
)
from label_pipeline.models import DEFAULT_ENCODER, resolve_model  # noqa: E402
from label_pipeline.store import StageRef, StageStore  # noqa: E402
from tasks.adapt import AdaptConfig, run_adapt  # noqa: E402

EMBEDDED = ROOT / "data" / "goemotions-ekman-sample.csv"
GOEMOTIONS = DATASETS / "goemotions/ekman/train.tsv"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_splits(
    directory: Path, train: list[str], valid: list[str], test: list[str], unlabeled: list[str]
) -> StageRef:
    """A split-stage directory with the four splits (labels are irrelevant to adapt)."""

    def ds(texts: list[str], prefix: str) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}{i}" for i in range(len(texts))],
                "text": texts,
                "labels": [[] for _ in texts],
            }
        )

    directory.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(
        {
            "train": ds(train, "t"),
            "valid": ds(valid, "v"),
            "test": ds(test, "s"),
            "unlabeled": ds(unlabeled, "u"),
        }
    ).save_to_disk(str(directory / "splits"))
    (directory / "labels.json").write_text(json.dumps({"labels": ["x"], "multi_label": True}))
    return StageRef(stage="split", fingerprint=f"bench-{directory.name}", path=str(directory))


def embedded_splits(directory: Path) -> StageRef:
    df = pd.read_csv(EMBEDDED, keep_default_na=False)
    labelled = df[df["labels"] != ""]["text"].tolist()
    unlabeled = df[df["labels"] == ""]["text"].tolist()
    random.Random(0).shuffle(labelled)
    return write_splits(directory, labelled[:300], labelled[300:450], labelled[450:], unlabeled)


def goemotions_splits(directory: Path, pool: int) -> StageRef:
    df = pd.read_csv(GOEMOTIONS, sep="\t", header=None, names=["text", "labels", "id"], quoting=3)
    texts = df["text"].astype(str).tolist()
    random.Random(0).shuffle(texts)
    return write_splits(
        directory, texts[:300], texts[300:600], texts[600:900], texts[900 : 900 + pool]
    )


def throughput(texts: list[str], steps: int, batch_size: int, max_length: int) -> dict:
    """Tokens/s of training steps: packed (masked-position head), packed (full head), unpacked."""
    mlm = load_masked_lm(resolve_model(DEFAULT_ENCODER, "bench"))
    tok, model = mlm.tokenizer, mlm.model
    cfg = AdaptConfig(max_length=max_length)
    packed = pack_texts(tok, texts, max_length)
    # unpacked: each text its own row, shuffled batches padded to the longest (a plain run_mlm
    # line_by_line setup)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    enc = tok(
        [texts[i] for i in order],
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    unpacked_rows = [
        {"input_ids": enc["input_ids"][i], "special_tokens_mask": enc["special_tokens_mask"][i]}
        for i in range(len(order))
    ]
    real = sum(len(r["input_ids"]) for r in unpacked_rows)
    slots = 0
    for s in range(0, len(unpacked_rows), batch_size):
        chunk = unpacked_rows[s : s + batch_size]
        slots += len(chunk) * max(len(r["input_ids"]) for r in chunk)
    unpacked_padding = 1 - real / slots

    collator = make_collator(tok, cfg.training(), seed=0)
    head = mlm_head(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def batches(kind: str):
        if kind == "unpacked":
            for s in range(0, len(unpacked_rows), batch_size):
                yield collator(unpacked_rows[s : s + batch_size])
        else:
            cols = list(packed.columns)
            for s in range(0, packed.blocks, batch_size):
                yield collator(
                    [
                        {k: packed.columns[k][i] for k in cols}
                        for i in range(s, min(s + batch_size, packed.blocks))
                    ]
                )

    def run(kind: str, use_head) -> dict:
        it = batches(kind)
        step = lambda b: (masked_loss(model, use_head, b).backward(), opt.step(), opt.zero_grad())  # noqa: E731
        step(next(it))  # warm-up step, not timed
        tokens, t0 = 0, time.perf_counter()
        for _ in range(steps):
            b = next(it)
            tokens += int(b["attention_mask"].sum())
            step(b)
        secs = time.perf_counter() - t0
        return {
            "steps": steps,
            "real_tokens": tokens,
            "seconds": round(secs, 2),
            "tokens_per_s": round(tokens / secs, 1),
        }

    out = {
        "batch_size": batch_size,
        "max_length": max_length,
        "torch_threads": torch.get_num_threads(),
        "padding_fraction": {
            "packed": round(packed.padding_fraction, 5),
            "unpacked_pad_to_longest": round(unpacked_padding, 4),
        },
        # interleave the variants so background load hits all of them alike
        "packed_masked_head": run("packed", head),
        "packed_full_head": run("packed", None),
        "unpacked_masked_head": run("unpacked", head),
    }
    out["speedup_packed_vs_unpacked"] = round(
        out["packed_masked_head"]["tokens_per_s"] / out["unpacked_masked_head"]["tokens_per_s"], 2
    )
    out["speedup_masked_head_vs_full_head"] = round(
        out["packed_masked_head"]["tokens_per_s"] / out["packed_full_head"]["tokens_per_s"], 2
    )
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def stage_run(name: str, splits: StageRef, cfg: AdaptConfig, store_dir: Path) -> dict:
    t0 = time.time()
    ref = run_adapt(StageStore(store_dir), cfg, splits)
    m = ref.manifest()
    keys = [
        "counts",
        "tokens",
        "blocks",
        "padding_fraction",
        "steps",
        "tokens_seen",
        "train_seconds",
        "stopped_by",
        "perplexity_before",
        "perplexity_after",
        "head_created",
        "device",
        "precision",
    ]
    return {
        "data": name,
        "budget": cfg.model_dump(
            include={
                "epochs",
                "max_steps",
                "max_minutes",
                "batch_size",
                "max_length",
                "learning_rate",
            }
        ),
        "wall_seconds": round(time.time() - t0, 1),
        **{k: m[k] for k in keys},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="throughput only")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per layout")
    ap.add_argument("--pool", type=int, default=20000, help="GoEmotions pool rows")
    ap.add_argument(
        "--goemotions-minutes", type=float, default=7.0, help="max_minutes on GoEmotions"
    )
    ap.add_argument("--skip-goemotions", action="store_true")
    args = ap.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch": torch.__version__, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
        emb = embedded_splits(Path(tmp) / "embedded")
        dd = datasets.load_from_disk(str(emb.dir / "splits"))
        texts = list(dd["unlabeled"]["text"]) + list(dd["train"]["text"])
        print(
            f"== throughput (bundled MiniLM, batch 16, block 128, {args.steps} timed steps per layout)"
        )
        tp = throughput(texts, args.steps, 16, 128)
        results["throughput"] = tp
        print(json.dumps(tp, indent=1))
        if not args.quick:
            print("== default budget on the embedded default data")
            results["embedded_default"] = stage_run(
                "embedded", emb, AdaptConfig(), Path(tmp) / "store"
            )
            print(json.dumps(results["embedded_default"], indent=1))
            if not args.skip_goemotions and GOEMOTIONS.is_file():
                cfg = AdaptConfig(epochs=1.0, max_minutes=args.goemotions_minutes)
                print(
                    f"== GoEmotions pool of {args.pool} rows, budget {cfg.epochs} epoch / {cfg.max_minutes} min"
                )
                ge = goemotions_splits(Path(tmp) / "goemotions", args.pool)
                results["goemotions"] = stage_run(
                    f"goemotions-{args.pool}", ge, cfg, Path(tmp) / "store"
                )
                print(json.dumps(results["goemotions"], indent=1))
    write_results("adapt_quick" if args.quick else "adapt", results)


if __name__ == "__main__":
    main()
