"""The `label-pipeline` flow: raw text with a few labels in, a classifier, a fully
labelled pool and a report out.

Run it on the embedded default data with ``make run`` (or
``python -m flows.label_pipeline``); pass ``--config my.yaml`` for your own data.
Each stage caches its output in the stage store, so a re-run only redoes what
changed. Every stage is a plain function in ``tasks/``; this file only wires them.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

# A fresh Prefect home migrates its database on the first start of the temporary API
# server, which takes longer than Prefect's 20 s default on a small machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow  # noqa: E402
from pydantic import ValidationError, WithJsonSchema  # noqa: E402

from flows.config import PipelineConfig, run_form_schema
from label_pipeline.devices import choose_device
from label_pipeline.failures import (
    DEBUG_ENV,
    config_error,
    quiet_user_error_tracebacks,
    report_user_errors,
)
from label_pipeline.models import DEFAULT_ENCODER, choose_encoder
from label_pipeline.orchestration import stage_task
from label_pipeline.outcome import result_lines
from label_pipeline.progress import quiet_progress_bars, stage_logger
from label_pipeline.run_settings import changed_settings, shared_store, with_deployment_settings
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


def sets_own(stage_cfg: Any, field: str) -> bool:
    """Whether a stage's config sets ``field`` itself: a value equal to the field's default,
    as a form that fills in every default sends, counts as not set."""
    default = type(stage_cfg).model_fields[field].get_default(call_default_factory=True)
    return field in stage_cfg.model_fields_set and getattr(stage_cfg, field) != default


def with_device(stage_cfg: Any, device: Any) -> Any:
    """Give a model stage the pipeline's device settings unless its config sets its own."""
    if "device" not in type(stage_cfg).model_fields or sets_own(stage_cfg, "device"):
        return stage_cfg
    return stage_cfg.model_copy(update={"device": device})


def _split_facts(splits: StageRef) -> dict[str, Any]:
    """The split stage's manifest ({} when it cannot be read)."""
    try:
        return splits.manifest()
    except (OSError, ValueError):
        return {}


def _pool_rows(splits: StageRef) -> int | None:
    """Rows in the split stage's unlabeled pool (None when its manifest does not say)."""
    n = _split_facts(splits).get("unlabeled_rows")
    return None if n is None else int(n)


#: the setting that names each stage's encoder, which the pipeline's ``encoder`` fills
ENCODER_FIELDS = {
    "adapt": "model",
    "zero_shot": "embedding_model",
    "quality": "encoder",
    "train": "encoder",
    "suggest": "encoder",
}
#: the cost estimate of ``encoder: auto``: about how many times a run passes each training
#: text through the encoder (fine-tuning epochs, self-training rounds, out-of-fold fits) and
#: each other text (zero-shot scoring, label checks, labelling the pool)
TRAIN_PASSES, OTHER_PASSES = 30, 3


def with_encoder(stage: str, stage_cfg: Any, encoder: str) -> Any:
    """Give a stage the pipeline's encoder unless its config names its own (the stages'
    defaults already mean the default encoder; a stage encoder equal to its default, as a
    form that fills in every default sends, counts as not named)."""
    field = ENCODER_FIELDS.get(stage)
    if field is None or encoder == DEFAULT_ENCODER or sets_own(stage_cfg, field):
        return stage_cfg
    return stage_cfg.model_copy(update={field: encoder})


def run_encoder(cfg: PipelineConfig, splits: StageRef) -> tuple[str, str]:
    """The pipeline's encoder for this run and why (``auto`` costed on the split's rows)."""
    man = _split_facts(splits)
    rows = {p: int(man.get(f"{p}_rows") or 0) for p in ("train", "valid", "test", "unlabeled")}
    total = sum(rows.values())
    passes = (TRAIN_PASSES * rows["train"] + OTHER_PASSES * (total - rows["train"])) / max(total, 1)
    device = choose_device(cfg.device)
    return choose_encoder(cfg.encoder, device, rows=total, passes=round(passes, 1))


class StageRun:
    """One run's stage calls: each stage task gets the run's store, its refresh flag and the
    pipeline's device settings and encoder (unless its own config sets them); the refs are
    collected."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.refs: dict[str, StageRef] = {}
        self.encoder = DEFAULT_ENCODER
        self.notes: list[str] = []

    def choose_encoder(self, splits: StageRef) -> None:
        self.encoder, why = run_encoder(self.cfg, splits)
        note = f"encoder: {self.encoder} ({why})"
        stage_logger().info(note)
        self.notes.append(note)

    def stage_config(self, name: str, stage_cfg: Any) -> Any:
        """The config a stage runs with in this run (device and encoder filled in); train keeps
        ``adapted`` when the adapt stage ran, as the adapted encoder is the run's encoder."""
        stage_cfg = with_device(stage_cfg, self.cfg.device)
        if name == "train" and self.get("adapt") is not None:
            return stage_cfg
        return with_encoder(name, stage_cfg, self.encoder)

    def __call__(self, task: Any, stage_cfg: Any, **inputs: Any) -> StageRef:
        name = task.stage
        stage_cfg = self.stage_config(name, stage_cfg)
        ref = task(self.cfg.store, stage_cfg, refresh=self.cfg.refreshes(name), **inputs)
        self.refs[name] = ref
        return ref

    def get(self, name: str) -> StageRef | None:
        return self.refs.get(name)


def data_stages(run: StageRun) -> StageRef:
    """ingest, clean, extra labels (when given), split; returns the split stage's ref."""
    cfg = run.cfg
    rows = run(ingest_task, cfg.ingest.for_rows())
    run(clean_task, cfg.clean, rows=rows)
    if cfg.ingest.has_label_feedback():  # extra labels (pool rows join train), label fixes
        run(extra_labels_task, cfg.ingest, rows=rows)
    return run(split_task, cfg.split, rows=run.get("clean"), extra=run.get("extra_labels"))


def pool_stages(run: StageRun, splits: StageRef) -> None:
    """The stages that read the unlabeled pool: adapt, augment, zero-shot (and its review)."""
    cfg = run.cfg
    if cfg.adapt.enabled and _pool_rows(splits) == 0:
        stage_logger().warning(
            "adapt: skipped, every row of the input is labelled (the unlabeled pool is empty), so "
            "there is no unlabeled text to adapt the encoder on; the base encoder is used. Add "
            "rows without labels to the input, or set adapt.enabled: false to silence this"
        )
    elif cfg.adapt.enabled:
        run(adapt_task, cfg.adapt, splits=splits)
    if cfg.augment.enabled:
        mlm = run.get("adapt") if cfg.augment.use_adapted_mlm else None
        run(augment_task, cfg.augment, splits=splits, mlm=mlm)
    if cfg.zero_shot.enabled:
        zero_shot_cfg = run.stage_config("zero_shot", cfg.zero_shot)
        # the fill-mask backend reads the adapted encoder when the adapt stage ran
        encoder = run.get("adapt") if zero_shot_cfg.backend == "fill_mask" else None
        if not cfg.refreshes("zero_shot"):  # shards as mapped tasks; the stage then assembles
            zero_shot.map_zero_shot_shards(
                cfg.store, zero_shot_cfg, splits, cfg.runner, encoder=encoder
            )
        scored = run(zero_shot_task, zero_shot_cfg, splits=splits, encoder=encoder)
        if cfg.review.after == "zero_shot":  # pauses for the reviewer
            run(review_task, review.gate(cfg.review, scored), source=scored)


def model_stages(run: StageRun, splits: StageRef) -> None:
    """quality, train, evaluate, label (and its review), suggest."""
    cfg = run.cfg
    if cfg.quality.enabled:  # the labelled rows checked before anything trains on them
        run(
            quality_task,
            cfg.quality,
            splits=splits,
            clean=run.get("clean"),
            zero_shot=run.get("zero_shot"),
        )
    if not cfg.train.enabled:
        return
    trained = run(
        train_task,
        cfg.train,
        splits=splits,
        augmented=run.get("augment"),
        pseudo=run.get("review") or run.get("zero_shot"),
        adapted=run.get("adapt"),
        quality=run.get("quality"),
    )
    if not cfg.evaluate.enabled:
        return
    evaluated = run(
        evaluate_task, cfg.evaluate, splits=splits, trained=trained, zero_shot=run.get("zero_shot")
    )
    if not cfg.label.enabled:
        return
    labelled = run(label_task, cfg.label, splits=splits, trained=trained, evaluated=evaluated)
    if cfg.review.after == "label":  # pauses for the reviewer
        run(review_task, review.gate(cfg.review, labelled), source=labelled)
    if cfg.suggest.enabled:
        reviewed = run.get("review") if cfg.review.after == "label" else None
        run(suggest_task, cfg.suggest, splits=splits, labelled=labelled, review=reviewed)


def run_stages(cfg: PipelineConfig, notes: list[str] | None = None) -> dict[str, StageRef]:
    """Run every enabled stage in order and return their references (no report); ``notes``
    gets the run's facts for the report (which encoder ran and why)."""
    run = StageRun(cfg)
    splits = data_stages(run)
    run.choose_encoder(splits)
    pool_stages(run, splits)
    model_stages(run, splits)
    if notes is not None:
        notes.extend(run.notes)
    return dict(run.refs)


def run_config(config: PipelineConfig) -> PipelineConfig:
    """The settings a run uses: in a deployment run, the deployment's ``config`` with the
    run's changes merged in field by field (Prefect itself replaces the whole parameter);
    the store from ``$LABEL_PIPELINE_STORE`` or the Prefect Variable ``label_pipeline_store``
    when the config leaves it at its default. Logs what the run changed and every setting
    that differs from the defaults."""
    logger = stage_logger()
    cfg, deployment, changes = with_deployment_settings(config, "config")
    if deployment is not None:
        logger.info(
            "settings: deployment %r, this run changes %s",
            deployment,
            ", ".join(changes) if changes else "nothing",
        )
    store, source = shared_store(cfg.store)
    if store != cfg.store:
        cfg = cfg.model_copy(update={"store": store})
    logger.info("store: %s (%s)", cfg.store, source)
    changed = changed_settings(cfg)
    logger.info("settings that differ from the defaults: %s", ", ".join(changed) or "none")
    return cfg


# log_prints stays off: it reroutes print(), which breaks libraries that capture stdout
@flow(name="label-pipeline", log_prints=False, validate_parameters=True)
def label_pipeline(
    config: Annotated[PipelineConfig, WithJsonSchema(run_form_schema())] = PipelineConfig(),  # noqa: B008
) -> dict[str, Any]:
    """Ingest, clean, split, (augment, zero-shot, adapt), train, evaluate, label, report.

    Args:
        config: the run's settings, every one optional. In a deployment run the fields given
            here are merged one by one onto the deployment's config: a run that sets one field
            keeps every other setting of its deployment.

    Returns the stage references (fingerprint and directory of every stage output) and
    the report directory.
    """
    quiet_user_error_tracebacks()  # Prefect logs a user error's message, not its traceback
    quiet_progress_bars()  # a worker's log gets no terminal bars (the progress artifacts stay)
    cfg = run_config(config)
    # fail fast, before any stage, on a worker without the GPU the run asks for
    device = choose_device(cfg.device)
    stage_logger().info("device: %s; task runner: %s", device.describe(), cfg.runner.kind)
    swept = StageStore(cfg.store).clean_stale_tmp()  # a live concurrent run's stay
    if swept:
        stage_logger().info("store: removed %d temporary dir(s) left by killed runs", swept)
    notes: list[str] = []
    refs = run_stages(cfg, notes)
    out: dict[str, Any] = {k: v.model_dump() for k, v in refs.items()}
    if cfg.report.enabled:
        report = report_stage.run_report(cfg.report, refs, cfg.report_dir(), notes)
        out["report"] = str(report)
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
            raise config_error(
                exc,
                "the command line",
                type(cfg.runner),
                prefix=("runner",),
                fix="fix --runner, --dask-address or --n-workers",
            ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    # a flow's task runner is fixed by its decorator: apply the configured one at call time
    result = run_with_runner(label_pipeline, cfg.runner, config=cfg)
    stop_temporary_server()  # its "Stopping temporary server" line comes before the result
    for stage, ref in result.items():
        if isinstance(ref, dict):
            print(f"{stage:>10}: {ref['path']}{'  (cached)' if ref['cached'] else ''}")
    if result.get("report"):
        print(f"{'report':>10}: {result['report']}")
    print("\n".join(result_lines(result)))  # the result in three lines, last


if __name__ == "__main__":
    main()
