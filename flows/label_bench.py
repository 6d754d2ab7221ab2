"""The `label-bench` flow: the learning-curve experiment.

Trains and evaluates every configured method on every nested training slice
(8, 16, ..., all) of the split stage, optionally with augmentation and zero-shot
pseudo-labels as extra method variants (``naive_bayes+aug``, ``naive_bayes+pseudo``),
and writes the report with the learning curves.

For results comparable with other tools, run it on pre-split input: an input file with a
``split`` column (train/valid/test/unlabeled) and a training-slices file, configured in
the ``ingest`` and ``split`` sections, so every tool sees identical rows.

At every slice the evaluate stage picks a model on valid as it picks the final one (never
below the best baseline beyond luck, the simplest within the tolerance; ``label_pipeline.choice.choose_final``):
the ``chosen`` curve of the learning-curve figures, and ``chosen_per_slice`` in the result.

Run it as a script: ``python -m flows.label_bench --config bench.yaml --variants aug``.
It reuses the stage tasks of ``flows/label_pipeline.py``, so stages already computed by
the main flow (same config, same inputs) come from the cache.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from flows.config import PipelineConfig
from flows.label_pipeline import run_stages
from label_pipeline.devices import choose_device
from label_pipeline.errors import ConfigError
from label_pipeline.failures import DEBUG_ENV, report_user_errors
from label_pipeline.temp_server import guard_temporary_server, stop_temporary_server
from tasks import report as report_stage
from tasks.train import ALL_SLICES, MODIFIERS, parse_method

VARIANT_STAGE = {"aug": "augment", "pseudo": "zero_shot"}


def bench_config(
    config: PipelineConfig, variants: list[str], variant_methods: list[str] | None
) -> PipelineConfig:
    """The pipeline config of the experiment: every slice, variant methods added, the
    stages the variants need switched on, no pool labelling."""
    unknown = sorted(set(variants) - set(MODIFIERS))
    if unknown:
        raise ConfigError(f"label-bench: unknown variant(s) {unknown}; use {sorted(MODIFIERS)}")
    methods = list(config.train.methods)
    bases = [parse_method(m)[0] for m in methods if not parse_method(m)[1]]
    targets = variant_methods if variant_methods is not None else bases
    missing = sorted(set(targets) - set(bases))
    if missing:
        raise ConfigError(
            f"label-bench: variant_methods {missing} are not in train.methods ({methods})"
        )
    for v in variants:
        methods += [f"{m}+{v}" for m in targets if f"{m}+{v}" not in methods]
    update: dict[str, Any] = {
        "train": config.train.model_copy(
            update={"enabled": True, "methods": methods, "slices": [ALL_SLICES]}
        ),
        "evaluate": config.evaluate.model_copy(update={"enabled": True}),
        "label": config.label.model_copy(update={"enabled": False}),
    }
    for v in variants:
        stage = VARIANT_STAGE[v]
        update[stage] = getattr(config, stage).model_copy(update={"enabled": True})
    return config.model_copy(update=update)


def chosen_per_slice(evaluated: Any) -> list[dict[str, Any]]:
    """The evaluate stage's choice at every slice (``[]`` when it did not run)."""
    import json
    from pathlib import Path

    if evaluated is None:
        return []
    path = Path(evaluated.dir) / "metrics.json"
    return json.loads(path.read_text()).get("chosen_per_slice", []) if path.is_file() else []


@flow(name="label-bench", log_prints=False, validate_parameters=True)
def label_bench(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008 (a validated Prefect parameter)
    variants: list[str] = [],  # noqa: B006 (Prefect parameters are copied per run)
    variant_methods: list[str] | None = None,
) -> dict[str, Any]:
    """Learning curves: every method × every nested slice, plus optional variants.

    Args:
        config: the pipeline config (data, split, methods, method params, device).
        variants: ``aug`` and/or ``pseudo``: also train ``<method>+aug`` / ``<method>+pseudo``.
        variant_methods: which methods get the variants (default: all configured ones).

    Returns the stage references, the model chosen at each slice (``chosen_per_slice``) and
    the report directory.
    """
    cfg = bench_config(config, list(variants), variant_methods)
    choose_device(cfg.device)  # fail fast on a worker without the requested GPU
    notes: list[str] = []
    refs = run_stages(cfg, notes)
    out: dict[str, Any] = {k: v.model_dump() for k, v in refs.items()}
    out["chosen_per_slice"] = chosen_per_slice(refs.get("evaluate"))
    if cfg.report.enabled:
        report = report_stage.run_report(cfg.report, refs, cfg.report_dir(), notes)
        out["report"] = str(report)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="label-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="JSON or YAML pipeline config (default: embedded data)")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(MODIFIERS))
    parser.add_argument("--variant-methods", nargs="*", default=None)
    parser.add_argument("--store", default=None, help="stage store directory (default .store)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    guard_temporary_server()  # stops with this process, however it ends
    with report_user_errors("label-bench", before_exit=stop_temporary_server):
        _run_cli(args)


def _run_cli(args: Any) -> None:
    cfg = PipelineConfig.from_file(args.config) if args.config else PipelineConfig()
    if args.store:
        cfg = cfg.model_copy(update={"store": args.store})
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    result = label_bench(config=cfg, variants=args.variants, variant_methods=args.variant_methods)
    for c in result.get("chosen_per_slice") or []:
        print(
            f"slice {c['slice']:>6} ({c['size']} rows): chosen {c['method']}, test micro-F1 "
            f"{c['micro_f1']:.3f}, macro-F1 {c['macro_f1']:.3f}"
        )
    for stage, ref in result.items():
        if isinstance(ref, dict) and "path" in ref:
            print(f"{stage:>10}: {ref['path']}{'  (cached)' if ref['cached'] else ''}")
    if result.get("report"):
        print(f"{'report':>10}: {result['report']}")


if __name__ == "__main__":
    main()
