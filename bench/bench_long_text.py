"""Long technical texts on NLBSE'24 issue reports: the embedding ``long_text`` policies and
the clean stage's rules for code, stack traces, logs, template headings and URLs.

Data: ``../shared/datasets/nlbse24-train/issues_train.csv`` (bug / feature / question, 5
repositories), read through the ingest stage with a config only (``text_columns: [title,
body]``, ``field_columns: [repo]``) and cleaned by ``tasks.clean.clean_rows``. A
label-stratified draw of ``--rows`` rows (seeded) is split once into test (a third),
valid (a sixth) and a training pool (the rest); each seed samples K rows per class from
the pool. Every configuration is chosen on **valid** (mean over K and seeds); test is
printed beside it and never used to choose.

Parts:

- ``policies``: ``embed_lr`` (``--methods`` adds e.g. ``knn``) on embeddings read with
  ``truncate`` (512 and ``--window`` tokens), ``head_tail``, ``chunks`` (mean / attention
  pooling) and title weights, on the default-cleaned text;
- ``clean``: ``tfidf_nb`` on the text cleaned by each rule variant (``CLEAN_VARIANTS``),
  ``embed_lr`` and ``hybrid`` (when the method exists) on ``--embed-variants`` with the
  ``--clean-embed`` policy (default ``truncate_<window>``);
- ``fields``: ``--methods`` (default ``tfidf_nb``, ``embed_lr``, ``hybrid``) on the text
  built with each set of structured fields in ``FIELD_VARIANTS`` (none, the repository, the
  repository and the issue template's section names), default-cleaned;
- ``finetune``: the fine-tuned classifier reading the default-cleaned text in each way of
  ``FINETUNE_READS`` (first tokens, first and last, the whole text in windows with mean or
  max pooling of their logits; the first tokens with another learning rate or more epochs;
  ``--finetune-reads`` picks some).

Window vectors are cached per process (``label_pipeline.embeddings``), so policies that
share windows (every short text) encode them once.

Usage: ``python bench/bench_long_text.py [--part policies clean fields finetune] [--rows 600]
[--k 8 32 64] [--seeds 0 1 2] [--window 256]``. Writes ``bench/results/bench_long_text.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DATASETS  # noqa: E402

from label_pipeline.devices import DeviceChoice, choose_device  # noqa: E402
from label_pipeline.methods import REGISTRY, FitContext, LabelledTexts, Method  # noqa: E402
from label_pipeline.metrics import f1_micro_macro  # noqa: E402
from label_pipeline.models import DEFAULT_ENCODER, resolve_model  # noqa: E402
from tasks.clean import CleanConfig, clean_rows  # noqa: E402
from tasks.ingest import IngestConfig, ingest_rows  # noqa: E402

NLBSE = DATASETS / "nlbse24-train" / "issues_train.csv"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_long_text.json"

#: the clean variants compared (each on top of the stage's defaults; every rule named, so
#: a variant means the same whatever the defaults are)
_SHORTEN = {
    "code_blocks": "shorten",
    "stack_traces": "shorten",
    "logs": "shorten",
    "indented_code": "keep",
    "urls": "drop",
    "headings": "drop",
}
CLEAN_VARIANTS: dict[str, dict] = {
    "shorten": dict(_SHORTEN),
    "keep_all": {
        **_SHORTEN,
        "code_blocks": "keep",
        "stack_traces": "keep",
        "logs": "keep",
        "urls": "keep",
        "remove_boilerplate": False,
    },
    "clean_v1": {**_SHORTEN, "stack_traces": "keep", "logs": "keep"},  # before these rules
    "markers": {
        **_SHORTEN,
        "code_blocks": "marker",
        "stack_traces": "marker",
        "logs": "marker",
        "indented_code": "marker",
        "urls": "marker",
    },
    "shorten_all": {**_SHORTEN, "indented_code": "shorten", "urls": "shorten"},
    "headings_keep": {**_SHORTEN, "headings": "keep"},
    "headings_keep_markers": {
        **_SHORTEN,
        "headings": "keep",
        "code_blocks": "marker",
        "stack_traces": "marker",
        "logs": "marker",
        "urls": "marker",
    },
}


#: how ``finetune`` reads a long text (its constructor arguments)
FINETUNE_READS: dict[str, dict] = {
    "head_128": {},
    "head_256": {"max_length": 256},
    "head_tail_128": {"truncation": "head_tail"},
    "chunks_128x4_mean": {"truncation": "chunks", "max_chunks": 4},
    "chunks_128x4_max": {"truncation": "chunks", "max_chunks": 4, "chunk_pooling": "max"},
    "head_128_lr5e-5": {"lr": 5e-5},
    "head_128_lr2e-4": {"lr": 2e-4},
    "head_128_20_epochs": {"epochs": 20, "patience": 6},
}


def policies(window: int) -> dict[str, dict]:
    """The ``embed_texts`` options compared (``window``: tokens per window)."""
    w = {"max_length": window}
    chunks = {**w, "long_text": "chunks", "max_chunks": 8}
    return {
        "truncate_512": {},
        f"truncate_{window}": dict(w),
        f"head_tail_{window}": {**w, "long_text": "head_tail"},
        f"chunks_{window}_mean": chunks,
        f"chunks_{window}_attention": {**chunks, "pooling": "attention"},
        f"chunks_{window}_mean_title1": {**chunks, "title_weight": 1.0},
        f"head_tail_{window}_title1": {**w, "long_text": "head_tail", "title_weight": 1.0},
    }


#: the structured fields written under the title (ingest ``field_columns``) compared by the
#: ``fields`` part; ``sections`` is derived from the body's headings by the ingest stage
FIELD_VARIANTS: dict[str, list[str]] = {
    "none": [],
    "repo": ["repo"],
    "repo_sections": ["repo", "sections"],
}


def load(rows: int, seed: int, fields: list[str] | None = None) -> dict:
    """NLBSE through ingest (config only; ``fields``: its ``field_columns``, default
    ``[repo]``), split into test / valid / training pool (the same rows whatever the fields)."""
    cols, facts = ingest_rows(
        IngestConfig(
            path=str(NLBSE),
            text_columns=["title", "body"],
            field_columns=["repo"] if fields is None else fields,
            label_column="label",
        )
    )
    labels = facts["labels"]
    y = np.array([labels.index(row[0]) for row in cols["labels"]])
    rng = np.random.default_rng(seed)
    per = rows // len(labels)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(len(labels))]
    )
    rng.shuffle(picked)
    parts = {"test": [], "valid": [], "pool": []}
    for c in range(len(labels)):
        mine = [i for i in picked if y[i] == c]
        n_test, n_valid = len(mine) // 3, len(mine) // 6
        parts["test"] += mine[:n_test]
        parts["valid"] += mine[n_test : n_test + n_valid]
        parts["pool"] += mine[n_test + n_valid :]
    return {
        "ids": cols["id"],
        "raw": cols["text"],
        "y": y,
        "labels": labels,
        **{k: np.array(v) for k, v in parts.items()},
    }


def clean_texts(data: dict, overrides: dict) -> tuple[list[str], dict]:
    """Every row's text cleaned with the stage's defaults plus ``overrides`` (rows the
    stage would drop keep their raw text, so every variant scores the same rows)."""
    n = len(data["raw"])
    res = clean_rows(
        data["ids"],
        data["raw"],
        [[data["labels"][c]] for c in data["y"]],
        CleanConfig(**overrides, dedup_exact=False, near_duplicates=False),
    )
    texts = list(data["raw"])
    for i in res.kept:
        texts[i] = res.texts[i]
    return texts, {"kept": len(res.kept), "rows": n, "rule_changes": res.rule_changes}


def draws(data: dict, ks: list[int], seeds: list[int]) -> list[tuple[int, int, np.ndarray]]:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        for k in ks:
            idx = np.concatenate(
                [
                    rng.choice(pool, min(k, len(pool)), replace=False)
                    for c in range(len(data["labels"]))
                    for pool in [data["pool"][data["y"][data["pool"]] == c]]
                ]
            )
            out.append((k, seed, idx))
    return out


def labelled(data: dict, texts: list[str], idx: np.ndarray) -> LabelledTexts:
    """The rows ``idx`` of ``data`` with their ``texts`` and one-hot labels (single-label)."""
    eye = np.eye(len(data["labels"]), dtype=int)
    return LabelledTexts([texts[i] for i in idx], eye[data["y"][idx]], data["labels"], False)


def fit_method(
    method: str,
    params: dict,
    train: LabelledTexts,
    valid: LabelledTexts,
    seed: int,
    device: DeviceChoice,
    encoder: str,
) -> Method:
    """``method`` with ``params`` fitted on ``train`` (``valid`` for its own choices) with
    ``seed``, in a throwaway work directory; the fitted method."""
    with tempfile.TemporaryDirectory() as work:
        ctx = FitContext(device=device, seed=seed, encoder=encoder, work_dir=Path(work))
        return REGISTRY[method](**params).fit(train, valid, ctx)


def score(
    data: dict, texts: list[str], method: str, params: dict, ks: list[int], seeds: list[int]
) -> dict:
    """Mean valid and test accuracy / macro-F1 per K of ``method`` on ``texts``."""
    n_lab = len(data["labels"])
    valid, test = labelled(data, texts, data["valid"]), labelled(data, texts, data["test"])
    device = choose_device()
    encoder = str(resolve_model(DEFAULT_ENCODER, purpose="bench"))
    per_k: dict[int, list[dict]] = {}
    t0 = time.time()
    for k, seed, idx in draws(data, ks, seeds):
        m = fit_method(method, params, labelled(data, texts, idx), valid, seed, device, encoder)
        out = {}
        for name, part in (("valid", valid), ("test", test)):
            pred = np.eye(n_lab, dtype=int)[m.predict_proba(part.texts).argmax(axis=1)]
            f = f1_micro_macro(part.y, pred)
            out[f"{name}_accuracy"] = float((pred.argmax(1) == part.y.argmax(1)).mean())
            out[f"{name}_macro_f1"] = f["macro_f1"]
        per_k.setdefault(k, []).append(out)
    res = {
        str(k): {key: float(np.mean([r[key] for r in v])) for key in v[0]} for k, v in per_k.items()
    }
    res["mean"] = {
        key: float(np.mean([res[str(k)][key] for k in per_k])) for key in next(iter(res.values()))
    }
    res["seconds"] = round(time.time() - t0, 1)
    return res


def line(name: str, res: dict, ks: list[int]) -> str:
    cells = " ".join(
        f"{res[str(k)]['valid_accuracy']:.3f}/{res[str(k)]['test_accuracy']:.3f}" for k in ks
    )
    m = res["mean"]
    return (
        f"  {name:<30} {cells}  | mean valid {m['valid_accuracy']:.3f} "
        f"(macro {m['valid_macro_f1']:.3f}) test {m['test_accuracy']:.3f} "
        f"(macro {m['test_macro_f1']:.3f}) [{res['seconds']:.0f}s]"
    )


def save(results: dict, out: str) -> None:
    """Write the figures so far (a run cut short keeps what it measured)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", nargs="+", default=["policies", "clean"])
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--k", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--policies", nargs="*", default=None, help="names of policies to run")
    ap.add_argument("--variants", nargs="*", default=None, help="names of clean variants")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument(
        "--embed-variants",
        nargs="*",
        default=["shorten", "keep_all", "markers", "headings_keep_markers"],
        help="clean variants also scored with the embedding methods (slow on a CPU)",
    )
    ap.add_argument("--clean-embed", default=None, help="policy of the embedding methods in clean")
    ap.add_argument("--finetune-reads", nargs="*", default=None, help="names in FINETUNE_READS")
    ap.add_argument("--fields", nargs="*", default=None, help="names in FIELD_VARIANTS")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if not NLBSE.is_file():
        print(f"skipped: {NLBSE} not found (set LABEL_PIPELINE_DATASETS)")
        return
    data = load(args.rows, seed=0)
    ks, seeds = args.k, args.seeds
    print(
        f"NLBSE: {len(data['test'])} test / {len(data['valid'])} valid / {len(data['pool'])} "
        f"pool rows; K per class {ks}, seeds {seeds}; cells: valid/test accuracy"
    )
    results: dict = {"rows": args.rows, "k": ks, "seeds": seeds, "window": args.window}
    default_texts, facts = clean_texts(data, {})
    if "policies" in args.part:
        methods = [
            m
            for m in args.methods or ["embed_lr"]
            if "embed_options" in inspect.signature(REGISTRY[m]).parameters
        ]
        results["policies"] = {}
        for name, opts in policies(args.window).items():
            if args.policies and name not in args.policies:
                continue
            for method in methods:
                res = score(data, default_texts, method, {"embed_options": opts}, ks, seeds)
                results["policies"][f"{method}/{name}"] = {"options": opts, **res}
                print(line(f"{method}/{name}", res, ks), flush=True)
                save(results, args.out)
    if "clean" in args.part:
        methods = args.methods or ["tfidf_nb", "embed_lr"] + (
            ["hybrid"] if "hybrid" in REGISTRY else []
        )
        results["clean"] = {}
        embed_opts = policies(args.window)[args.clean_embed or f"truncate_{args.window}"]
        results["clean_embed_options"] = embed_opts
        for name, overrides in CLEAN_VARIANTS.items():
            if args.variants and name not in args.variants:
                continue
            texts, facts = clean_texts(data, overrides)
            for method in methods:
                embeds = "embed_options" in inspect.signature(REGISTRY[method]).parameters
                if embeds and name not in args.embed_variants:
                    continue
                params = {"embed_options": embed_opts} if embeds else {}
                res = score(data, texts, method, params, ks, seeds)
                results["clean"][f"{method}/{name}"] = {"overrides": overrides, **res, **facts}
                print(line(f"{method}/{name}", res, ks), flush=True)
                save(results, args.out)
    if "fields" in args.part:
        methods = args.methods or ["tfidf_nb", "embed_lr", "hybrid"]
        results["fields"] = {}
        for name, fields in FIELD_VARIANTS.items():
            if args.fields and name not in args.fields:
                continue
            variant = load(args.rows, seed=0, fields=fields)
            assert list(variant["ids"]) == list(data["ids"]), "fields changed the rows"
            texts, _ = clean_texts(variant, {})
            for method in methods:
                res = score(data, texts, method, {}, ks, seeds)
                results["fields"][f"{method}/{name}"] = {"field_columns": fields, **res}
                print(line(f"{method}/{name}", res, ks), flush=True)
                save(results, args.out)
    if "finetune" in args.part:
        results["finetune"] = {}
        for name, params in FINETUNE_READS.items():
            if args.finetune_reads and name not in args.finetune_reads:
                continue
            res = score(data, default_texts, "finetune", params, ks, seeds)
            results["finetune"][f"finetune/{name}"] = {"params": params, **res}
            print(line(f"finetune/{name}", res, ks), flush=True)
            save(results, args.out)
    for part in ("policies", "clean", "fields", "finetune"):
        for method in sorted({n.split("/")[0] for n in results.get(part, {})}):
            mine = [n for n in results[part] if n.startswith(method + "/")]
            best = max(mine, key=lambda n: results[part][n]["mean"]["valid_accuracy"])
            print(f"best {part} for {method} on valid accuracy: {best}")
    save(results, args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
