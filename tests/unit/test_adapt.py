"""The adapt stage: masked-LM domain adaptation on tiny random BERTs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch

from label_pipeline.devices import choose_device
from label_pipeline.errors import ConfigError, EmptyPoolError
from label_pipeline.mlm import heldout_perplexity, load_masked_lm, pack_texts, train_masked_lm
from label_pipeline.store import StageRef, StageStore
from label_pipeline.testing import DEFAULT_CORPUS, make_tiny_bert
from tasks import adapt
from tasks.adapt import AdaptConfig, run_adapt, select_texts

CPU = choose_device(AdaptConfig(device={"device": "cpu"}).device)
FAST = {"max_length": 32, "batch_size": 8, "save_steps": 50, "logging_steps": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread, and do not stall when other work shares the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny BertModel: no masked-LM head, like the bundled all-MiniLM-L6-v2."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-base"), "base")


def _texts(n: int, prefix: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(DEFAULT_CORPUS)} {prefix} {i}" for i in range(n)]


def make_splits(
    directory: Path,
    unlabeled: list[str] | None = None,
    train: list[str] | None = None,
    valid: list[str] | None = None,
    test: list[str] | None = None,
) -> StageRef:
    """A fake split-stage directory: DatasetDict train/valid/test/unlabeled + labels.json."""
    parts = {
        "train": _texts(20, "train", 1) if train is None else train,
        "valid": _texts(6, "valid", 2) if valid is None else valid,
        "test": _texts(6, "test", 3) if test is None else test,
        "unlabeled": _texts(240, "pool", 4) if unlabeled is None else unlabeled,
    }
    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {
                    "id": [f"{name}-{i}" for i in range(len(texts))],
                    "text": texts,
                    "labels": [["joy"] if name != "unlabeled" else [] for _ in texts],
                },
                features=datasets.Features(
                    {
                        "id": datasets.Value("string"),
                        "text": datasets.Value("string"),
                        "labels": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            )
            for name, texts in parts.items()
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(directory / "splits"))
    (directory / "labels.json").write_text(json.dumps({"labels": ["joy"], "multi_label": True}))
    return StageRef(stage="split", fingerprint=f"fake-{directory.name}", path=str(directory))


def _stage_dirs(store_root: Path) -> list[Path]:
    d = store_root / "adapt"
    return (
        [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")] if d.is_dir() else []
    )


# ------------------------------------------------------------------------ model loading


def test_missing_head_is_created_tied_and_encoder_weights_loaded(base_dir):
    from transformers import BertModel

    mlm = load_masked_lm(base_dir)
    assert mlm.head_created and "no masked-LM head" in mlm.note
    decoder = mlm.model.get_output_embeddings().weight
    assert decoder.data_ptr() == mlm.model.get_input_embeddings().weight.data_ptr()
    base = BertModel.from_pretrained(str(base_dir))
    own = mlm.model.base_model.state_dict()
    for name, tensor in base.state_dict().items():
        if name.startswith("pooler."):
            continue  # BertForMaskedLM has no pooler
        assert torch.equal(own[name], tensor), f"encoder weight {name} was not loaded"


def test_existing_head_is_kept(tiny_mlm_dir):
    from transformers import BertForMaskedLM

    mlm = load_masked_lm(tiny_mlm_dir)
    assert not mlm.head_created
    ref = BertForMaskedLM.from_pretrained(str(tiny_mlm_dir))
    assert torch.equal(
        mlm.model.cls.predictions.transform.dense.weight,
        ref.cls.predictions.transform.dense.weight,
    )


def test_model_without_masked_lm_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    ).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="no masked-LM architecture"):
        load_masked_lm(tmp_path)


def test_checkpoint_missing_encoder_weights_is_refused(base_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(base_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    dropped = {k: v for k, v in weights.items() if "encoder.layer.0.attention.self.query" not in k}
    assert len(dropped) < len(weights)
    save_file(dropped, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="does not hold the weights of its own encoder"):
        load_masked_lm(broken)


# ------------------------------------------------------------------------ data


def test_valid_and_test_texts_never_selected(tmp_path):
    valid, test = _texts(6, "valid", 2), _texts(6, "test", 3)
    pool = _texts(100, "pool", 4) + [valid[0], test[1].upper()]  # leaked copies
    train = _texts(10, "train", 1) + [valid[2]]
    ref = make_splits(tmp_path / "split", pool, train, valid, test)
    texts = select_texts(datasets.load_from_disk(str(ref.dir / "splits")), 0.1, 100, True, seed=0)
    protected = {t.casefold() for t in valid + test}
    assert not protected & {t.casefold() for t in texts.train + texts.heldout}
    assert texts.counts["dropped_overlap_valid_test"] == 3
    assert texts.counts["heldout_rows"] == 10
    assert not set(texts.heldout) & set(texts.train)  # held-out rows are kept out of training
    assert len(texts.train) == 100 - 10 + 10


def test_pack_texts_keeps_every_token_and_pads_little(base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    texts = _texts(50, "pool", 4) + [" ".join(["cat"] * 200)]  # one text longer than a block
    packed = pack_texts(tok, texts, 16)
    expected = [i for ids in tok(texts, truncation=True, max_length=16)["input_ids"] for i in ids]
    assert packed.tokens == len(expected)
    assert all(len(b) == 16 for col in packed.columns.values() for b in col)
    flat = [
        i
        for b, m in zip(packed.columns["input_ids"], packed.columns["attention_mask"], strict=True)
        for i, keep in zip(b, m, strict=True)
        if keep
    ]
    assert flat == expected
    assert packed.truncated == 1
    assert packed.pad_tokens < 16 and packed.padding_fraction < 0.05
    # [CLS]/[SEP] and padding are never candidates for masking
    for ids, special in zip(
        packed.columns["input_ids"], packed.columns["special_tokens_mask"], strict=True
    ):
        for i, s in zip(ids, special, strict=True):
            assert bool(s) == (i in {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id})


# ------------------------------------------------------------------------ training


def test_loss_falls_on_repeated_text(tiny_mlm_dir, tmp_path):
    cfg = AdaptConfig(
        model=str(tiny_mlm_dir), max_steps=40, learning_rate=3e-3, warmup_ratio=0.0, **FAST
    )
    mlm = load_masked_lm(tiny_mlm_dir)
    blocks = pack_texts(mlm.tokenizer, [DEFAULT_CORPUS[0]] * 200, cfg.max_length)
    before = heldout_perplexity(mlm, blocks, cfg.training(), CPU)
    assert before == heldout_perplexity(
        mlm, blocks, cfg.training(), CPU
    )  # fixed masks: reproducible
    result = train_masked_lm(mlm, blocks, cfg.training(), CPU, tmp_path / "work")
    after = heldout_perplexity(mlm, blocks, cfg.training(), CPU)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert result.steps == 40 and result.stopped_by == "max_steps"
    assert losses[-1] < 0.5 * losses[0]
    assert after < 0.2 * before


def test_wall_clock_limit_stops_training(tiny_mlm_dir, tmp_path):
    cfg = AdaptConfig(model=str(tiny_mlm_dir), epochs=500, max_minutes=0.02, **FAST)
    mlm = load_masked_lm(tiny_mlm_dir)
    blocks = pack_texts(mlm.tokenizer, _texts(100, "pool", 4), cfg.max_length)
    result = train_masked_lm(mlm, blocks, cfg.training(), CPU, tmp_path / "work")
    planned = 500 * -(-blocks.blocks // cfg.batch_size)
    assert result.stopped_by == "max_minutes"
    assert 1 <= result.steps < planned


def test_new_head_learns_at_its_own_rate(base_dir, tmp_path):
    cfg = AdaptConfig(
        model=str(base_dir),
        max_steps=2,
        learning_rate=1e-9,
        head_learning_rate=1e-2,
        warmup_ratio=0.0,
        **FAST,
    )
    mlm = load_masked_lm(base_dir)
    layer = mlm.model.base_model.encoder.layer[0].attention.self.query.weight
    head = mlm.model.cls.predictions.transform.dense.weight
    layer0, head0 = layer.detach().clone(), head.detach().clone()
    blocks = pack_texts(mlm.tokenizer, _texts(80, "pool", 4), cfg.max_length)
    train_masked_lm(mlm, blocks, cfg.training(), CPU, tmp_path / "work")
    assert (head - head0).abs().max() > 1e-3
    assert (layer - layer0).abs().max() < 1e-6


def test_whole_word_masking_trains(base_dir, tmp_path):
    cfg = AdaptConfig(model=str(base_dir), max_steps=3, whole_word_masking=True, **FAST)
    mlm = load_masked_lm(base_dir)
    blocks = pack_texts(mlm.tokenizer, _texts(80, "pool", 4), cfg.max_length, offsets=True)
    assert "offset_mapping" in blocks.columns
    result = train_masked_lm(mlm, blocks, cfg.training(), CPU, tmp_path / "work")
    assert result.steps == 3


def test_adapt_encoder_trains_the_selected_texts_without_writing_the_stage(base_dir, tmp_path):
    """The stage's compute part on texts the test builds: no store, only its work directory."""
    from tasks.adapt import AdaptTexts, adapt_encoder

    texts = AdaptTexts(
        train=_texts(120, "pool", 4),
        heldout=_texts(6, "held", 5),
        counts={"unlabeled_train_rows": 120, "train_rows": 0, "heldout_rows": 6},
    )
    cfg = AdaptConfig(model=str(base_dir), max_steps=3, sample_rows=2, device={"device": "cpu"})
    cfg = cfg.model_copy(update=FAST)
    adapted = adapt_encoder(texts, base_dir, cfg, tmp_path / "work")
    facts = adapted.facts
    assert adapted.training.steps == facts["steps"] == 3 and facts["stopped_by"] == "max_steps"
    assert facts["head_created"] and facts["counts"] is texts.counts
    assert facts["heldout_blocks"] >= 1 and facts["blocks"] >= cfg.batch_size
    assert facts["perplexity_before"] > 0 and facts["perplexity_after"] > 0
    # the new head is random: "before" is read through a copy fitted on the frozen encoder
    assert facts["perplexity_before"] < facts["perplexity_before_random_head"]
    assert "fitted for 60 steps" in facts["perplexity_before_measured_with"]
    assert facts["budget"]["head_learning_rate"] == cfg.head_learning_rate
    assert [s["masked_text"].count("[MASK]") for s in adapted.samples] == [1, 1]
    assert adapted.mlm.model.get_output_embeddings() is not None
    assert [p.name for p in tmp_path.iterdir()] == ["work"]  # nothing but its checkpoints
    # the same texts and seed: the same held-out perplexity before training
    again = adapt_encoder(texts, base_dir, cfg, tmp_path / "work2")
    assert again.facts["perplexity_before"] == pytest.approx(facts["perplexity_before"])
    # measuring "before" through a fitted head leaves the training as it is
    plain = adapt_encoder(
        texts, base_dir, cfg.model_copy(update={"head_fit_steps": 0}), tmp_path / "work3"
    )
    assert plain.facts["perplexity_before"] == facts["perplexity_before_random_head"]
    trained, other = adapted.mlm.model.state_dict(), plain.mlm.model.state_dict()
    assert all(torch.equal(trained[k], other[k]) for k in trained)


@pytest.mark.slow
def test_stage_trains_saves_loadable_model_and_caches(base_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    splits = make_splits(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    cfg = AdaptConfig(model=str(base_dir), epochs=2, **FAST)
    ref = run_adapt(store, cfg, splits)
    assert not ref.cached
    man = ref.manifest()
    assert man["head_created"] is True
    assert man["steps"] > 0 and man["tokens_seen"] > 0 and man["stopped_by"] == "epochs"
    assert man["counts"]["heldout_rows"] == 12 and man["counts"]["train_rows"] == 20
    assert man["perplexity_before"] > 0 and man["perplexity_after"] > 0
    assert man["device"] == "cpu" and man["precision"] == "fp32"
    summary = (ref.dir / "summary.md").read_text()
    assert "**created**" in summary and "perplexity" in summary
    assert (ref.dir / "figures" / "loss_curve.png").stat().st_size > 1000
    assert json.loads((ref.dir / "sample.json").read_text())
    assert not (ref.dir.parent / f".work-{ref.fingerprint}").exists()  # checkpoints cleaned up

    model, info = AutoModelForMaskedLM.from_pretrained(
        str(ref.dir / "model"), output_loading_info=True
    )
    assert not info["missing_keys"]  # encoder and head were both saved
    assert (
        model.get_output_embeddings().weight.data_ptr()
        == model.get_input_embeddings().weight.data_ptr()
    )
    clf = AutoModelForSequenceClassification.from_pretrained(str(ref.dir / "model"), num_labels=3)
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(ref.dir / "model"))(
        ["the cat sat"], return_tensors="pt"
    )
    assert clf(**enc).logits.shape == (1, 3)

    again = run_adapt(store, cfg, splits)
    assert again.cached and again.path == ref.path
    # a refresh rebuilds, and the new head starts from the same seeded weights
    rebuilt = run_adapt(store, cfg, splits, refresh=True)
    assert not rebuilt.cached and rebuilt.path == ref.path
    assert rebuilt.manifest()["perplexity_before"] == pytest.approx(man["perplexity_before"])


@pytest.mark.slow
def test_interrupted_run_resumes_from_checkpoint(base_dir, tmp_path, monkeypatch):
    splits = make_splits(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    cfg = AdaptConfig(model=str(base_dir), max_steps=8, **{**FAST, "save_steps": 4})
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:  # checkpoint-4 is on disk
                raise KeyboardInterrupt("simulated kill")

    real_train = adapt.train_masked_lm
    monkeypatch.setattr(
        adapt, "train_masked_lm", lambda *a, **k: real_train(*a, callbacks=[Kill()], **k)
    )
    with pytest.raises(KeyboardInterrupt):
        run_adapt(store, cfg, splits)
    assert _stage_dirs(tmp_path / "store") == []  # no half-written stage directory
    work = list((tmp_path / "store" / "adapt").glob(".work-*"))
    assert len(work) == 1 and (work[0] / "checkpoint-4" / "trainer_state.json").is_file()

    monkeypatch.setattr(adapt, "train_masked_lm", real_train)
    ref = run_adapt(store, cfg, splits)
    man = ref.manifest()
    assert man["resumed_from_step"] == 4 and man["steps"] == 8
    assert "resumed from step 4" in (ref.dir / "summary.md").read_text()
    assert not work[0].exists()


def test_training_sees_only_pool_and_train_texts(base_dir, tmp_path, monkeypatch):
    valid, test = _texts(6, "valid", 2), _texts(6, "test", 3)
    splits = make_splits(tmp_path / "split", valid=valid, test=test)
    seen: list[list[str]] = []
    real_pack = adapt.pack_texts

    def spy(tokenizer, texts, *args, **kwargs):
        seen.append(list(texts))
        return real_pack(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(adapt, "pack_texts", spy)
    cfg = AdaptConfig(model=str(base_dir), max_steps=2, **FAST)
    ref = run_adapt(StageStore(tmp_path / "store"), cfg, splits)
    trained, heldout = seen[0], seen[1]
    assert not set(trained) & set(valid + test) and not set(heldout) & set(valid + test)
    assert set(_texts(20, "train", 1)) <= set(trained)
    assert not set(heldout) & set(trained)
    assert ref.manifest()["counts"]["heldout_rows"] == len(heldout) > 0


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_give_clear_errors(base_dir, tmp_path):
    store = StageStore(tmp_path / "store")
    ok = make_splits(tmp_path / "ok")
    cfg = AdaptConfig(model=str(base_dir), **FAST)
    with pytest.raises(EmptyPoolError, match="unlabeled pool .* is empty"):
        run_adapt(store, cfg, make_splits(tmp_path / "blank", unlabeled=["", "   "]))
    no_pool = make_splits(tmp_path / "no-pool")
    dd = datasets.load_from_disk(str(no_pool.dir / "splits"))
    datasets.DatasetDict({k: v for k, v in dd.items() if k != "unlabeled"}).save_to_disk(
        str(tmp_path / "no-pool-2" / "splits")
    )
    with pytest.raises(EmptyPoolError, match="adapt.enabled=false"):
        run_adapt(store, cfg, no_pool.model_copy(update={"path": str(tmp_path / "no-pool-2")}))
    with pytest.raises(EmptyPoolError, match="adapt.batch_size=8"):
        run_adapt(
            store,
            cfg,
            make_splits(tmp_path / "small", unlabeled=["the cat sat"] * 3, train=["a dog"]),
        )
    with pytest.raises(ConfigError, match="adapt.max_steps=0"):
        run_adapt(store, cfg.model_copy(update={"max_steps": 0}), ok)
    with pytest.raises(ConfigError, match="adapt.epochs=0"):
        run_adapt(store, cfg.model_copy(update={"epochs": 0.0}), ok)
    with pytest.raises(ConfigError, match="adapt.max_minutes=0"):
        run_adapt(store, cfg.model_copy(update={"max_minutes": 0.0}), ok)
    with pytest.raises(ConfigError, match="adapt.enabled is false"):
        run_adapt(store, cfg.model_copy(update={"enabled": False}), ok)
    with pytest.raises(Exception, match="adapt.model"):
        run_adapt(store, cfg.model_copy(update={"model": str(tmp_path / "nowhere")}), ok)
    assert _stage_dirs(tmp_path / "store") == []
    assert not list((tmp_path / "store" / "adapt").glob(".tmp-*"))


def test_defaults_are_valid_and_enabled():
    cfg = AdaptConfig()
    adapt.check_budget(cfg)
    assert cfg.enabled and cfg.mlm_probability == 0.15
    with pytest.raises(Exception, match="extra"):
        AdaptConfig(epoch=1)
