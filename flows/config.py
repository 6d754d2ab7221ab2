"""The typed pipeline configuration: the stages' pydantic models, composed here (above the
stages, so the library never imports a stage).

The same object is the ``label-pipeline`` flow's parameter, so the Prefect UI shows
and validates it and ``prefect.yaml`` sets it per deployment. Defaults run on the
embedded data on a CPU laptop.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from label_pipeline.config_schema import form_schema
from label_pipeline.devices import DeviceConfig
from label_pipeline.errors import ConfigError
from label_pipeline.failures import config_error
from label_pipeline.reading import IngestConfig
from label_pipeline.runners import RunnerConfig
from label_pipeline.zeroshot.loading import ZeroShotConfig
from tasks.adapt import AdaptConfig
from tasks.augment import AugmentConfig
from tasks.clean import CleanConfig
from tasks.evaluate import EvaluateConfig
from tasks.label import LabelConfig
from tasks.quality import QualityConfig
from tasks.report import ReportConfig
from tasks.review import ReviewConfig
from tasks.split import SplitConfig
from tasks.suggest import SuggestConfig
from tasks.train import TrainConfig


class PipelineConfig(BaseModel):
    """Everything a ``label-pipeline`` run needs.

    Attributes:
        store: root of the stage store, a local directory or an fsspec URL
            (``s3://bucket/store``); every stage writes ``<store>/<stage>/<fingerprint>/``.
            Left at ``.store``, a run uses the shared store named by the environment variable
            ``LABEL_PIPELINE_STORE`` or else the Prefect Variable ``label_pipeline_store``
            when either is set, else ``.store`` in the working directory.
        reports_dir: where ``<run_name>/report.md`` and figures are written.
        run_name: names the report folder; default: derived from the input and time.
        refresh: stage names to recompute even when cached (``["all"]`` for every stage).
        device: device, precision and batch sizes for the model stages.
        encoder: the base sentence encoder of every stage that embeds or fine-tunes (adapt,
            train, the zero-shot embedding backend, quality, suggest) unless the stage names
            its own: ``auto`` picks all-mpnet-base-v2 (when installed, ``make mpnet``) on a
            CUDA GPU or where its estimated cost on this machine fits, all-MiniLM-L6-v2
            otherwise, and the run's log and report say which and why; or a hub id or local
            directory.
        runner: where tasks run (Prefect's thread pool or a Dask cluster) and how many
            shards the row-wise stages use.
        review: the review gate: pause after ``zero_shot`` or ``label`` for a person to
            accept or change the selection rule in the Prefect UI (default: never).
        suggest: the next pool rows to label (after the label stage).
    """

    model_config = ConfigDict(extra="forbid")

    store: str = ".store"
    reports_dir: str = "reports"
    run_name: str | None = None
    refresh: list[str] = Field(default_factory=list)
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    encoder: str = "auto"
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    zero_shot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    suggest: SuggestConfig = Field(default_factory=SuggestConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def refreshes(self, stage: str) -> bool:
        return "all" in self.refresh or stage in self.refresh

    def report_name(self) -> str:
        """``run_name``, else ``<input file stem>-<timestamp>`` (safe as a folder name)."""
        if self.run_name:
            return re.sub(r"[^A-Za-z0-9._-]+", "-", self.run_name)
        stem = Path(str(self.ingest.path or "run")).stem or "run"
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', stem)}-{time.strftime('%Y%m%d-%H%M%S')}"

    def report_dir(self) -> Path:
        """Where this run's report goes: ``<reports_dir>/<report_name()>``."""
        return Path(self.reports_dir) / self.report_name()

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """Load a JSON or YAML config file. A missing or unreadable file, a syntax error
        (with its line and column) and an invalid value (by its dotted field path) raise
        :class:`ConfigError` naming the file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"--config {path}: no such file (looked at {p.expanduser().absolute()}); give the "
                "path of a YAML or JSON config file"
            ) from None
        except IsADirectoryError:
            raise ConfigError(
                f"--config {path}: is a directory; give a YAML or JSON file"
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"--config {path}: not a text file (byte {exc.start} is not UTF-8); give a "
                "YAML or JSON config file"
            ) from None
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot be read ({exc.strerror})") from None
        if p.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
                at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                context, since = getattr(exc, "context", None), getattr(exc, "context_mark", None)
                if context and since is not None and since is not mark:
                    context += f" (from line {since.line + 1}, column {since.column + 1})"
                problem = getattr(exc, "problem", None)
                what = ": ".join(str(x) for x in (context, problem) if x)
                raise ConfigError(
                    f"{path}:{at}: not valid YAML ({what or exc}); fix the file's syntax there "
                    "(indentation, a missing ':' or an unclosed quote or bracket)"
                ) from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); "
                    "fix the file's syntax there (or give a .yaml file)"
                ) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the config is a {type(data).__name__}, not a mapping of settings; write "
                "it as 'section: {setting: value}' lines, e.g. 'ingest: {path: my.csv}'"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, str(path), cls) from None


#: the run form in the Prefect UI: the settings a user changes most come first, by section
#: (``""`` is the top level); the other fields follow in class order
FORM_FIRST: dict[str, list[str]] = {
    "": ["ingest", "train", "split", "review", "device", "store", "suggest", "run_name"],
    "ingest": [
        "path",
        "format",
        "text_column",
        "text_columns",
        "label_column",
        "label_separator",
        "multi_label",
        "id_column",
        "split_column",
        "extra_labels",
        "label_fixes",
    ],
    "train": ["methods", "slices"],
    "split": ["slice_sizes", "seed"],
    "review": ["after"],
    "device": ["device", "allow_cpu_fallback", "batch_size_gpu", "batch_size_cpu"],
}


def form_hidden() -> list[str]:
    """The stages' own device settings: the form shows the pipeline's ``device`` once (a stage
    without its own device settings gets the pipeline's). A config file, the CLI and the API
    may still set ``<stage>.device``."""
    return [
        f"{name}.device"
        for name, info in PipelineConfig.model_fields.items()
        if name != "device" and "device" in getattr(info.annotation, "model_fields", {})
    ]


def run_form_schema() -> dict[str, Any]:
    """The JSON schema of the flow's ``config`` parameter as the Prefect UI shows it: every
    field with its own description and default, most-changed fields first, device once."""
    return form_schema(PipelineConfig, first=FORM_FIRST, hidden=form_hidden())
