"""The pipeline's ``encoder`` (``auto`` by default) reaches every stage that embeds or fine-tunes,
unless the stage names its own; ``auto`` is costed on the run's rows and device; a method that
fine-tunes starts from the adapted encoder or the one before adaptation, as its setting says."""

from __future__ import annotations

import json

import pytest
import test_contrastive

from label_pipeline.models import DEFAULT_ENCODER, STRONG_ENCODER
from label_pipeline.store import StageRef

OTHER = "some-org/other-encoder"
toy = test_contrastive.toy  # the tiny encoder fixture, shared with the setfit tests


def _splits(tmp_path, **rows):
    d = tmp_path / "split"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({f"{k}_rows": v for k, v in rows.items()}))
    return StageRef(stage="split", fingerprint="s", path=str(d))


def _run(config: dict, splits=None, adapted=False):
    from flows.config import PipelineConfig
    from flows.label_pipeline import StageRun

    run = StageRun(PipelineConfig.model_validate(config))
    if splits is not None:
        run.choose_encoder(splits)
    if adapted:
        run.refs["adapt"] = StageRef(stage="adapt", fingerprint="a", path="/nowhere")
    return run


def test_a_named_encoder_reaches_every_encoder_stage_unless_the_stage_names_its_own(tmp_path):
    run = _run({"encoder": OTHER, "suggest": {"encoder": "mine"}}, _splits(tmp_path, train=10))
    cfg = run.cfg
    assert run.encoder == OTHER and run.notes == [f"encoder: {OTHER} (requested)"]
    assert run.stage_config("adapt", cfg.adapt).model == OTHER
    assert run.stage_config("zero_shot", cfg.zero_shot).embedding_model == OTHER
    assert run.stage_config("quality", cfg.quality).encoder == OTHER
    assert run.stage_config("suggest", cfg.suggest).encoder == "mine"  # its own setting wins
    assert run.stage_config("train", cfg.train).encoder == OTHER  # no adapt stage: the base
    assert run.stage_config("clean", cfg.clean) == cfg.clean
    adapted = _run({"encoder": OTHER}, _splits(tmp_path / "b", train=10), adapted=True)
    assert adapted.stage_config("train", adapted.cfg.train).encoder == "adapted"


def test_auto_on_a_cpu_keeps_the_default_encoder_and_every_stage_config_as_it_was(tmp_path):
    run = _run(
        {"device": {"device": "cpu"}},
        _splits(tmp_path, train=300, valid=300, test=300, unlabeled=4700),
    )
    assert run.encoder == DEFAULT_ENCODER and run.notes[0].startswith(f"encoder: {DEFAULT_ENCODER}")
    from flows.label_pipeline import with_device

    cfg = run.cfg
    for name in ("adapt", "zero_shot", "quality", "train", "suggest"):
        stage = getattr(cfg, name)
        assert run.stage_config(name, stage) == with_device(stage, cfg.device)


def test_auto_costs_the_strong_encoder_on_the_rows_and_takes_it_on_a_gpu():
    from label_pipeline.models import choose_encoder

    many = choose_encoder("auto", "cpu", rows=5600, passes=4.6, strong_available=True)
    few = choose_encoder("auto", "cpu", rows=40, passes=3, strong_available=True)
    gpu = choose_encoder("auto", "cuda", rows=5600, passes=4.6, strong_available=True)
    missing = choose_encoder("auto", "cuda", rows=10, strong_available=False)
    assert many[0] == DEFAULT_ENCODER and "budget" in many[1]
    assert few[0] == STRONG_ENCODER and gpu[0] == STRONG_ENCODER
    assert missing[0] == DEFAULT_ENCODER and "not installed" in missing[1]


def test_the_train_stage_passes_on_the_encoder_the_adaptation_started_from(tmp_path):
    """When train reads the adapt stage's encoder, the methods also get the one the adaptation
    started from (the adapt stage's ``model``, e.g. the run's ``encoder: auto`` choice), so
    ``prototype`` can start there; with no adaptation, or another train encoder, there is none."""
    from tasks.train import TrainConfig, adaptation_start

    start = tmp_path / "start-encoder"
    start.mkdir()
    (start / "config.json").write_text("{}")
    adapt = tmp_path / "adapt"
    (adapt / "model").mkdir(parents=True)
    (adapt / "manifest.json").write_text(json.dumps({"config": {"model": str(start)}}))
    ref = StageRef(stage="adapt", fingerprint="a", path=str(adapt))

    assert adaptation_start(TrainConfig(), ref) == str(start.resolve())
    assert adaptation_start(TrainConfig(), None) is None
    assert adaptation_start(TrainConfig(encoder="base"), ref) is None
    assert adaptation_start(TrainConfig(encoder=str(start)), ref) is None


#: the method's call that receives the encoder directory its fit starts from, and where
START_CALL = {"prototype": ("_load_encoder", 0), "finetune": ("_fit_once", 3)}


@pytest.mark.parametrize("method", sorted(START_CALL))
@pytest.mark.parametrize(
    "setting, adapted_run, multi_label, starts_from",
    [
        ("base", True, False, "base"),
        ("adapted", True, False, "adapted"),
        ("base", False, False, "adapted"),
        ("auto", True, False, "base"),
        ("auto", True, True, "adapted"),
        ("auto", False, False, "adapted"),
    ],
)
def test_a_fit_starts_from_the_encoder_its_setting_names(
    toy, tmp_path, monkeypatch, method, setting, adapted_run, multi_label, starts_from
):
    """``encoder: base`` starts the fit from the encoder the adapt stage started from
    (``FitContext.base_encoder``), ``encoder: adapted`` from the adapted one, ``auto`` from
    the base one for single-label rows and the adapted one for multi-label rows; with no
    adaptation (no ``base_encoder``) each starts from the context's encoder."""
    import shutil

    from test_finetune import CPU, multi_label_rows, single_label_rows

    from label_pipeline.methods import FitContext, get_method

    adapted = tmp_path / "adapted"
    shutil.copytree(toy, adapted)
    cls = get_method(method)
    name, at = START_CALL[method]
    started: list[str] = []
    real = getattr(cls, name)

    def spy(self, *args, **kwargs):
        started.append(str(args[at]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    ctx = FitContext(
        device=CPU,
        encoder=str(adapted),
        base_encoder=str(toy) if adapted_run else None,
        seed=0,
    )
    params = {"prototype": {"self_training_rounds": 0}, "finetune": {"batch_size": 8}}[method]
    model = cls(encoder=setting, epochs=1, **params)
    rows = multi_label_rows if multi_label else single_label_rows
    train, valid = rows(6, 1), rows(12, 2)
    model.fit(train, valid, ctx)
    expected = str(toy) if starts_from == "base" else str(adapted)
    assert started == [expected] and ctx.info["encoder"] == expected
    assert model.predict_proba(["a text"]).shape == (1, len(train.label_names))
