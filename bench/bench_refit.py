"""What a kept pipeline would have shipped with one method's settings changed: the method
refitted on every slice as the train stage fits it, each slice's ``average`` rebuilt from the
refitted run and the others as saved, and the evaluate stage's choice made again.

Everything else is the kept run's: its split, its adapted encoder (and the encoder the
adaptation started from), its train and evaluate settings (a setting its config does not
name takes today's default), the other methods' saved probabilities. So the comparison with the kept run is paired; the refit with no setting
changed reproduces the kept run (``--set`` left out: a check of this benchmark).

One thing is not replayed: a method fitted after the refitted one in a slice was given a
valid bar by the runs before it (it skips self-training that cannot reach the bar); that
run stays as saved, and the output lists the runs whose bar would have moved.

    .venv/bin/python bench/bench_issues.py --datasets nlbse --seeds 0 --nlbse-pool --keep DIR
    .venv/bin/python bench/bench_refit.py DIR/nlbse-pool-0 finetune --set encoder=base
    .venv/bin/python bench/bench_refit.py DIR/nlbse-pool-0 finetune --slices 24 192
    .venv/bin/python bench/bench_refit.py --summarize bench/results/bench_refit_finetune_*.json

Writes ``bench/results/bench_refit_<method><tag>.json`` (``--tag``): per slice the kept and
the refitted method's valid/test scores and fit seconds, and the chosen model's before and
after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import only_one, setup_project, write_results  # noqa: E402

setup_project()


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs; a value is read as JSON when it parses (numbers, null, true)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            sys.exit(f"--set takes name=value, got {pair!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _stage_ref(directory: Path) -> Any:
    from label_pipeline.store import StageRef

    return StageRef(stage=directory.parent.name, fingerprint=directory.name, path=str(directory))


def _saved(stage_dir: Path, entry: dict[str, Any]) -> SimpleNamespace:
    """A saved run as :func:`tasks.train.average_run` reads it: ``entry``, ``dir``, ``probs``."""
    run_dir = stage_dir / entry["dir"]
    probs = {s: np.load(run_dir / f"{s}_probs.npy") for s in ("valid", "test")}
    return SimpleNamespace(entry=entry, dir=entry["dir"], probs=probs)


def _evaluate(
    stage_dir: Path, runs: list[dict[str, Any]], ys: dict, ev_cfg: Any, info: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The evaluate stage on a train stage's runs: the chosen model of each slice, and each
    run's test micro/macro-F1 (and accuracy) by its ``dir`` in ``runs.json``."""
    from tasks.evaluate import evaluate_trained, read_saved_runs

    saved = read_saved_runs(stage_dir, runs)
    ev = evaluate_trained(runs, saved, ys, info["labels"], info["multi_label"], None, ev_cfg)
    by_dir = {r["run_dir"]: r for r in ev.runs}
    chosen = [
        {
            "slice": c["slice"],
            "size": c["size"],
            "method": c["method"],
            "valid_micro_f1": by_dir[c["run_dir"]]["valid"]["micro_f1"],
            **{k: c[k] for k in ("micro_f1", "macro_f1", "accuracy")},
        }
        for c in ev.per_slice
    ]
    scores = {
        str(Path(d).relative_to(stage_dir)): {
            k: r["test"].get(k) for k in ("micro_f1", "macro_f1", "accuracy")
        }
        for d, r in by_dir.items()
    }
    return chosen, scores


def _run_facts(entry: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    """One run's valid scores (``runs.json``), test scores, fit seconds and encoder."""
    keep = ("valid_micro_f1", "valid_macro_f1")
    return {
        **{k: entry[k] for k in keep},
        **test,
        "fit_seconds": entry.get("fit_seconds"),
        "encoder": entry.get("encoder"),
    }


def refit(kept: Path, method: str, settings: dict[str, Any], slices: list[str] | None) -> dict:
    from label_pipeline.data import label_matrix, load_splits
    from label_pipeline.devices import choose_device
    from tasks.evaluate import EvaluateConfig
    from tasks.train import (
        TrainConfig,
        _link_tree,
        adaptation_start,
        average_run,
        fit_run,
        read_train_data,
        resolve_encoder,
        run_context,
        slice_bar,
        slice_rows,
        write_run,
    )

    store = kept / "store"
    train_dir = only_one(store, "train/*/runs.json", "train stage").parent
    manifest = json.loads((train_dir / "manifest.json").read_text())
    inputs = {k: store / v["stage"] / v["fingerprint"] for k, v in manifest["inputs"].items()}
    split_dir = inputs["splits"]
    adapted = _stage_ref(inputs["adapted"]) if "adapted" in inputs else None
    ev_dir = next(
        d.parent
        for d in store.glob("evaluate/*/manifest.json")
        if json.loads(d.read_text())["inputs"]["trained"]["fingerprint"] == train_dir.name
    )
    cfg = TrainConfig(**manifest["config"])
    ev_cfg = EvaluateConfig(**json.loads((ev_dir / "manifest.json").read_text())["config"])
    specs = [s for s in cfg.methods if s.split("+")[0] == method]
    if not specs:
        sys.exit(f"the kept train stage did not run {method!r} (its methods: {cfg.methods})")
    params = {**cfg.method_params.get(method, {}), **settings}
    try:  # checked as the config is loaded: a bad --set is named before any fit
        new_cfg = TrainConfig(
            **{**manifest["config"], "method_params": {**cfg.method_params, method: params}}
        )
    except ValueError as exc:
        sys.exit(f"--set: {exc}")
    for name in ("augmented", "pseudo", "quality"):  # what the train stage read besides
        if name in inputs:
            sys.exit(f"the kept train stage read the {name} stage; this benchmark does not")

    warnings: list[str] = []
    data = read_train_data(new_cfg, _stage_ref(split_dir), None, None, None, warnings)
    encoder, _ = resolve_encoder(cfg, adapted)
    base_encoder = adaptation_start(cfg, adapted)
    device = choose_device(cfg.device)
    splits = load_splits(split_dir)
    info = {"labels": data.labels, "multi_label": data.multi_label}
    ys = {
        s: label_matrix([list(x) for x in splits[s]["labels"]], data.labels)
        for s in ("valid", "test")
    }
    runs = json.loads((train_dir / "runs.json").read_text())
    before, kept_scores = _evaluate(train_dir, runs, ys, ev_cfg, info)

    def fitted_before(spec: str, slice_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The runs of ``slice_runs`` the train stage fits before the method ``spec``."""
        return [r for r in slice_runs if cfg.methods.index(r["method"]) < cfg.methods.index(spec)]

    refitted, moved_bars = [], []  # (slice, spec, kept entry, refitted entry)
    with tempfile.TemporaryDirectory(prefix="bench-refit-") as tmp:
        stage = Path(tmp) / "train"
        _link_tree(train_dir, stage)  # hard links: the saved runs, replaced one by one
        for slice_name in data.names:
            if slices and slice_name not in slices:
                continue
            rows = slice_rows(data, slice_name, cfg.label_issues)
            at = {r["method"]: k for k, r in enumerate(runs) if r and r["slice"] == slice_name}
            for spec in specs:
                old = runs[at[spec]]
                in_slice = [runs[k] for m, k in at.items() if m != "average"]
                with tempfile.TemporaryDirectory(prefix="lp-train-") as work:
                    earlier = fitted_before(spec, in_slice)
                    ctx = run_context(data, cfg, device, encoder, base_encoder, work, earlier)
                    run = fit_run(data, new_cfg, rows, spec, ctx, warnings)
                shutil.rmtree(stage / run.dir)
                write_run(stage, run)
                run.model = None
                runs[at[spec]] = run.entry
                refitted.append((slice_name, spec, old, run.entry))
                print(
                    f"{spec} / {slice_name}: valid micro-F1 {old['valid_micro_f1']:.3f} -> "
                    f"{run.entry['valid_micro_f1']:.3f}, {run.entry['fit_seconds']:.0f} s",
                    flush=True,
                )
                in_slice = [runs[k] for m, k in at.items() if m != "average"]
                for r in in_slice:  # the runs fitted after it, given a bar by the runs before
                    if cfg.methods.index(r["method"]) <= cfg.methods.index(spec):
                        continue
                    fit = json.loads((stage / r["dir"] / "fit.json").read_text())
                    bar = slice_bar(data, cfg, fitted_before(r["method"], in_slice))
                    if fit.get("valid_bar") != bar:
                        moved_bars.append(
                            {
                                "run": r["dir"],
                                "was": fit.get("valid_bar"),
                                "now": bar,
                                "skipped": fit.get("info", {}).get("self_training_skipped", ""),
                            }
                        )
            if "average" in at:
                a = at["average"]
                in_slice = [runs[k] for m, k in at.items() if m != "average"]
                avg = average_run([_saved(stage, r) for r in in_slice], cfg, data, warnings)
                shutil.rmtree(stage / runs[a]["dir"])
                if avg is None:
                    runs[a] = None  # left out below, once every slice is done
                else:
                    write_run(stage, avg)
                    runs[a] = avg.entry
        runs = [r for r in runs if r is not None]
        (stage / "runs.json").unlink()  # a hard link to the kept file: write a new one
        (stage / "runs.json").write_text(json.dumps(runs, indent=2))
        after, refit_scores = _evaluate(stage, runs, ys, ev_cfg, info)
    return {
        "kept": str(kept),
        "method": method,
        "settings": settings,
        "encoder": encoder,
        "base_encoder": base_encoder,
        "method_runs": [
            {
                "slice": slice_name,
                "method": spec,
                "kept": _run_facts(old, kept_scores[old["dir"]]),
                "refit": _run_facts(new, refit_scores[new["dir"]]),
            }
            for slice_name, spec, old, new in refitted
        ],
        "chosen": {"kept": before, "refit": after},
        "moved_bars": moved_bars,
        "warnings": warnings,
    }


def _score(r: dict[str, Any], multi: bool) -> str:
    """Accuracy (single-label) or micro / macro-F1 (multi-label), or a dash."""
    if not r:
        return "–"
    return f"{r['micro_f1']:.3f} / {r['macro_f1']:.3f}" if multi else f"{r['accuracy']:.3f}"


def table(result: dict[str, Any]) -> str:
    """The method's and the chosen model's test score per slice, kept and refitted."""
    runs = result["method_runs"]
    multi = bool(runs) and runs[0]["kept"]["accuracy"] is None
    before = {c["slice"]: c for c in result["chosen"]["kept"]}
    after = {c["slice"]: c for c in result["chosen"]["refit"]}
    m = result["method"]
    lines = [
        f"{result['kept']}: {m} with {result['settings'] or 'its kept settings'}",
        f"| slice | {m}, kept | {m}, refitted | chosen, kept | chosen, refitted |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        b, a = before.get(r["slice"], {}), after.get(r["slice"], {})
        lines.append(
            f"| {r['slice']} | {_score(r['kept'], multi)} ({r['kept']['fit_seconds']:.0f} s) | "
            f"{_score(r['refit'], multi)} ({r['refit']['fit_seconds']:.0f} s) | "
            f"{_score(b, multi)} {b.get('method', '')} | {_score(a, multi)} {a.get('method', '')} |"
        )
    return "\n".join(lines)


def across(results: list[dict[str, Any]]) -> str:
    """Per slice, the mean over several results (seeds) of the method's and the chosen
    model's test score, kept and refitted, and the refitted − kept difference in points."""
    multi = results[0]["method_runs"][0]["kept"]["accuracy"] is None
    key = "micro_f1" if multi else "accuracy"
    cells: dict[str, dict[str, list[float]]] = {}
    for res in results:
        chosen = {w: {c["slice"]: c[key] for c in res["chosen"][w]} for w in ("kept", "refit")}
        for r in res["method_runs"]:
            c = cells.setdefault(r["slice"], {})
            for w in ("kept", "refit"):
                c.setdefault(f"method {w}", []).append(r[w][key])
                c.setdefault(f"chosen {w}", []).append(chosen[w][r["slice"]])
    m = results[0]["method"]
    lines = [
        f"mean of {len(results)} ({key}): {m} with {results[0]['settings']}",
        f"| slice | {m}, kept | refitted | Δ points | chosen, kept | refitted | Δ points |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cells.items():
        mean = {k: sum(v) / len(v) for k, v in c.items()}
        lines.append(
            f"| {name} ({len(c['method kept'])}) | {mean['method kept']:.3f} | "
            f"{mean['method refit']:.3f} | "
            f"{100 * (mean['method refit'] - mean['method kept']):+.1f} | "
            f"{mean['chosen kept']:.3f} | {mean['chosen refit']:.3f} | "
            f"{100 * (mean['chosen refit'] - mean['chosen kept']):+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "kept", nargs="?", help="KEEP/<dataset>-<seed>, a store kept by bench_issues --keep"
    )
    parser.add_argument(
        "method", nargs="?", help="the method to refit (its runs with modifiers too)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="settings")
    parser.add_argument("--slices", nargs="*", default=None, help="only these slices")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument(
        "--summarize", nargs="+", metavar="JSON", help="the mean of earlier results (seeds)"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        print(across([json.loads(Path(f).read_text()) for f in args.summarize]))
        return
    if not (args.kept and args.method):
        parser.error("give the kept store and the method to refit (or --summarize)")
    result = refit(Path(args.kept), args.method, parse_settings(args.set), args.slices)
    print(table(result), flush=True)
    write_results(f"bench_refit_{args.method}", result, args.tag)


if __name__ == "__main__":
    main()
