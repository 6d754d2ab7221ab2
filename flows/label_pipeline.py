"""The `label-pipeline` flow: raw text with a few labels in, a classifier, a fully
labelled pool and a report out.

Run it on the embedded default data with ``make run`` (or
``python -m flows.label_pipeline``); pass ``--config my.yaml`` for your own data.
Each stage caches its output in the stage store, so a re-run only redoes what
changed. Every stage is a plain function in ``tasks/``; this file only wires them.
"""

from __future__ import annotations

import os
from typing import Any

# A fresh Prefect home migrates its database on the first start of the temporary API
# server, which takes longer than Prefect's 20 s default on a small machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from flows.config import PipelineConfig
from label_pipeline.devices import choose_device
from label_pipeline.failures import (
    DEBUG_ENV,
    config_error,
    quiet_user_error_tracebacks,
    report_user_errors,
)
from label_pipeline.orchestration import stage_task
from label_pipeline.progress import stage_logger
from label_pipeline.runners import run_with_runner
from label_pipeline.store import StageRef, StageStore
from label_pipeline.temp_server import guard_temporary_server, stop_temporary_server
from tasks import (
    adapt,
    augment,
    clean,
    evaluate,
    extra_labels,
    ingest,
    label,
    quality,
    review,
    split,
    suggest,
    train,
    zero_shot,
)
from tasks import report as report_stage

ingest_task = stage_task(ingest.run_ingest, ingest.SPEC)
extra_labels_task = stage_task(extra_labels.run_extra_labels, extra_labels.SPEC)
clean_task = stage_task(clean.run_clean, clean.SPEC)
split_task = stage_task(split.run_split, split.SPEC)
augment_task = stage_task(augment.run_augment, augment.SPEC)
zero_shot_task = stage_task(zero_shot.run_zero_shot, zero_shot.SPEC)
adapt_task = stage_task(adapt.run_adapt, adapt.SPEC)
quality_task = stage_task(quality.run_quality, quality.SPEC)
train_task = stage_task(train.run_train, train.SPEC)
evaluate_task = stage_task(evaluate.run_evaluate, evaluate.SPEC)
label_task = stage_task(label.run_label, label.SPEC)
review_task = stage_task(review.run_review, review.SPEC)
suggest_task = stage_task(suggest.run_suggest, suggest.SPEC)


def with_device(stage_cfg: Any, device: Any) -> Any:
    """Give a model stage the pipeline's device settings unless its config sets its own."""
    if "device" in type(stage_cfg).model_fields and "device" not in stage_cfg.model_fields_set:
        return stage_cfg.model_copy(update={"device": device})
    return stage_cfg


def _pool_rows(splits: StageRef) -> int | None:
    """Rows in the split stage's unlabeled pool (None when its manifest does not say)."""
    try:
        n = splits.manifest().get("unlabeled_rows")
    except (OSError, ValueError):
        return None
    return None if n is None else int(n)


def run_stages(cfg: PipelineConfig) -> dict[str, StageRef]:
    """Run every enabled stage in order and return their references (no report)."""
    store = cfg.store
    refs: dict[str, StageRef | None] = {}
    refs["ingest"] = ingest_task(store, cfg.ingest.for_rows(), refresh=cfg.refreshes("ingest"))
    refs["clean"] = clean_task(
        store, cfg.clean, refresh=cfg.refreshes("clean"), rows=refs["ingest"]
    )
    if cfg.ingest.has_label_feedback():  # extra labels (pool rows join train), label fixes
        refs["extra_labels"] = extra_labels_task(
            store, cfg.ingest, refresh=cfg.refreshes("extra_labels"), rows=refs["ingest"]
        )
    refs["split"] = split_task(
        store,
        cfg.split,
        refresh=cfg.refreshes("split"),
        rows=refs["clean"],
        extra=refs.get("extra_labels"),
    )
    splits = refs["split"]

    adapt_cfg, augment_cfg = (
        with_device(cfg.adapt, cfg.device),
        with_device(cfg.augment, cfg.device),
    )
    zero_shot_cfg, train_cfg = (
        with_device(cfg.zero_shot, cfg.device),
        with_device(cfg.train, cfg.device),
    )
    label_cfg = with_device(cfg.label, cfg.device)

    if adapt_cfg.enabled and _pool_rows(splits) == 0:
        stage_logger().warning(
            "adapt: skipped, every row of the input is labelled (the unlabeled pool is empty), so "
            "there is no unlabeled text to adapt the encoder on; the base encoder is used. Add "
            "rows without labels to the input, or set adapt.enabled: false to silence this"
        )
    elif adapt_cfg.enabled:
        refs["adapt"] = adapt_task(store, adapt_cfg, refresh=cfg.refreshes("adapt"), splits=splits)
    if augment_cfg.enabled:
        refs["augment"] = augment_task(
            store,
            augment_cfg,
            refresh=cfg.refreshes("augment"),
            splits=splits,
            mlm=refs.get("adapt") if augment_cfg.use_adapted_mlm else None,
        )
    if zero_shot_cfg.enabled:
        # the fill-mask backend reads the adapted encoder when the adapt stage ran
        encoder = refs.get("adapt") if zero_shot_cfg.backend == "fill_mask" else None
        if not cfg.refreshes("zero_shot"):  # shards as mapped tasks; the stage then assembles
            zero_shot.map_zero_shot_shards(
                store, zero_shot_cfg, splits, cfg.runner, encoder=encoder
            )
        refs["zero_shot"] = zero_shot_task(
            store, zero_shot_cfg, refresh=cfg.refreshes("zero_shot"), splits=splits, encoder=encoder
        )
        if cfg.review.after == "zero_shot":  # pauses for the reviewer
            decision = review.gate(cfg.review, refs["zero_shot"])
            refs["review"] = review_task(
                store, decision, refresh=cfg.refreshes("review"), source=refs["zero_shot"]
            )
    if cfg.quality.enabled:  # the labelled rows checked before anything trains on them
        refs["quality"] = quality_task(
            store,
            with_device(cfg.quality, cfg.device),
            refresh=cfg.refreshes("quality"),
            splits=splits,
            clean=refs["clean"],
            zero_shot=refs.get("zero_shot"),
        )
    if train_cfg.enabled:
        refs["train"] = train_task(
            store,
            train_cfg,
            refresh=cfg.refreshes("train"),
            splits=splits,
            augmented=refs.get("augment"),
            pseudo=refs.get("review") or refs.get("zero_shot"),
            adapted=refs.get("adapt"),
            quality=refs.get("quality"),
        )
        if cfg.evaluate.enabled:
            refs["evaluate"] = evaluate_task(
                store,
                cfg.evaluate,
                refresh=cfg.refreshes("evaluate"),
                splits=splits,
                trained=refs["train"],
                zero_shot=refs.get("zero_shot"),
            )
            if label_cfg.enabled:
                refs["label"] = label_task(
                    store,
                    label_cfg,
                    refresh=cfg.refreshes("label"),
                    splits=splits,
                    trained=refs["train"],
                    evaluated=refs["evaluate"],
                )
                if cfg.review.after == "label":  # pauses for the reviewer
                    decision = review.gate(cfg.review, refs["label"])
                    refs["review"] = review_task(
                        store, decision, refresh=cfg.refreshes("review"), source=refs["label"]
                    )
                if cfg.suggest.enabled:
                    refs["suggest"] = suggest_task(
                        store,
                        with_device(cfg.suggest, cfg.device),
                        refresh=cfg.refreshes("suggest"),
                        splits=splits,
                        labelled=refs["label"],
                        review=refs.get("review") if cfg.review.after == "label" else None,
                    )
    return {k: v for k, v in refs.items() if v is not None}


# log_prints stays off: it reroutes print(), which breaks libraries that capture stdout
@flow(name="label-pipeline", log_prints=False, validate_parameters=True)
def label_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:  # noqa: B008
    """Ingest, clean, split, (augment, zero-shot, adapt), train, evaluate, label, report.

    Returns the stage references (fingerprint and directory of every stage output) and
    the report directory.
    """
    cfg = config
    quiet_user_error_tracebacks()  # Prefect logs a user error's message, not its traceback
    # fail fast, before any stage, on a worker without the GPU the run asks for
    device = choose_device(cfg.device)
    stage_logger().info("device: %s; task runner: %s", device.describe(), cfg.runner.kind)
    swept = StageStore(cfg.store).clean_stale_tmp()  # a live concurrent run's stay
    if swept:
        stage_logger().info("store: removed %d temporary dir(s) left by killed runs", swept)
    refs = run_stages(cfg)
    out: dict[str, Any] = {k: v.model_dump() for k, v in refs.items()}
    if cfg.report.enabled:
        out["report"] = str(report_stage.run_report(cfg.report, refs, cfg.report_dir()))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="label-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="JSON or YAML pipeline config (default: embedded data)")
    parser.add_argument("--refresh", nargs="*", default=None, help="stages to recompute, or 'all'")
    parser.add_argument("--store", default=None, help="stage store dir or URL (default .store)")
    parser.add_argument("--runner", choices=["default", "dask"], default=None, help="task runner")
    parser.add_argument("--dask-address", default=None, help="existing Dask scheduler address")
    parser.add_argument("--n-workers", type=int, default=None, help="local Dask cluster workers")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error in the input or config too (or {DEBUG_ENV}=1)",
    )
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    # a user error ends the run with one paragraph on stderr; the temporary Prefect server
    # stops with this process, however it ends
    guard_temporary_server()
    with report_user_errors("label-pipeline", before_exit=stop_temporary_server):
        _run_cli(args)


def _run_cli(args: Any) -> None:
    cfg = PipelineConfig.from_file(args.config) if args.config else PipelineConfig()
    if args.refresh is not None:
        cfg = cfg.model_copy(update={"refresh": args.refresh or ["all"]})
    if args.store:
        cfg = cfg.model_copy(update={"store": args.store})
    given = {"kind": args.runner, "address": args.dask_address, "n_workers": args.n_workers}
    runner = {k: v for k, v in given.items() if v is not None}
    if args.dask_address:
        runner["kind"] = "dask"
    if runner:
        merged = {**cfg.runner.model_dump(), **runner}
        try:
            cfg = cfg.model_copy(update={"runner": type(cfg.runner).model_validate(merged)})
        except ValidationError as exc:
            raise config_error(exc, "the --runner/--dask-address/--n-workers options") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    # a flow's task runner is fixed by its decorator: apply the configured one at call time
    result = run_with_runner(label_pipeline, cfg.runner, config=cfg)
    for stage, ref in result.items():
        if isinstance(ref, dict):
            print(f"{stage:>10}: {ref['path']}{'  (cached)' if ref['cached'] else ''}")
    if result.get("report"):
        print(f"{'report':>10}: {result['report']}")


if __name__ == "__main__":
    main()
