"""Typed plugin settings and their registries: every method, augmenter, zero-shot backend and
query strategy declares a documented settings model; ``train.method_params`` is checked
through the methods' models as the config loads."""

from __future__ import annotations

import importlib.util
import inspect
import json
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from label_pipeline import active
from label_pipeline.augmenters import available_augmenters, get_augmenter
from label_pipeline.augmenters.base import AUGMENTERS
from label_pipeline.errors import ConfigError
from label_pipeline.methods import REGISTRY, get_method
from label_pipeline.methods.base import METHODS, MethodSettings, check_method_params
from label_pipeline.registry import PluginSettings, Registry
from label_pipeline.zeroshot import available_backends, get_backend
from label_pipeline.zeroshot.base import BACKENDS

ROOT = Path(__file__).resolve().parents[2]
METHOD_NAMES = [
    "distill",
    "embed_lr",
    "ensemble",
    "finetune",
    "hybrid",
    "knn",
    "naive_bayes",
    "prototype",
    "setfit",
    "tfidf_nb",
]

#: every method's defaults as its constructor had them before the settings models
DEFAULTS = {
    "naive_bayes": {"alpha": 1.0, "lowercase": True},
    "tfidf_nb": {
        "alphas": [0.001, 0.01, 0.03, 0.1, 0.3, 1.0],
        "folds": 5,
        "default_alpha": 0.1,
        "ngram_max": 3,
        "min_df": 1,
    },
    "embed_lr": {
        "encoder": None,
        "C": 10.0,
        "class_weight": None,
        "max_iter": 2000,
        "batch_size": None,
        "embed_options": {},
    },
    "knn": {"encoder": None, "max_k": 15, "default_k": 5, "batch_size": None, "embed_options": {}},
    "hybrid": {
        "blocks": ["word", "char", "embed", "zero_shot"],
        "word_ngram_max": 2,
        "char_ngram": [2, 5],
        "max_features": 200_000,
        "weights": {},
        "Cs": [1.0, 3.0, 10.0, 30.0],
        "default_C": 10.0,
        "folds": 3,
        "class_weight": "balanced",
        "calibrate": "auto",
        "min_calibration_positives": 5,
        "prior_weights": [0.0, 2.5, 5.0, 10.0, 20.0, 40.0],
        "prior_min_gain": 0.03,
        "encoder": None,
        "embed_options": {},
        "batch_size": None,
        "max_iter": 1000,
    },
    "finetune": {
        "epochs": 12,
        "patience": 3,
        "monitor": "micro_f1",
        "lr": 1e-4,
        "head_lr": 1e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "batch_size": None,
        "eval_batch_size": None,
        "max_length": 128,
        "truncation": "head",
        "head_fraction": 0.5,
        "max_chunks": 4,
        "chunk_pooling": "mean",
        "class_weighting": "balanced",
        "max_pos_weight": 10.0,
        "dropout": None,
        "encoder": "auto",
        "self_training_rounds": 0,
        "self_training_floor": 0.9,
        "self_training_per_label": 64,
        "self_training_weight": 0.5,
        "self_training_pool_size": 2000,
        "self_training_max_gain": 0.1,
    },
    "setfit": {
        "pairs_per_row": 10,
        "epochs": 1,
        "batch_size": 16,
        "lr": 2e-5,
        "scale": 20.0,
        "symmetric": True,
        "max_length": 128,
        "head": "logistic",
        "head_c": 10.0,
        "class_weighting": "balanced",
        "finetune_params": None,
        "eval_batch_size": None,
        "self_training_rounds": 0,
        "self_training_floor": 0.9,
        "self_training_per_label": 64,
        "self_training_weight": 0.5,
        "self_training_pool_size": 2000,
        "self_training_max_gain": 0.1,
    },
    "prototype": {
        "epochs": 8,
        "lr": 2e-5,
        "head_lr": 1e-3,
        "temperature": 0.05,
        "batch_size": 16,
        "max_length": 128,
        "weight_decay": 0.01,
        "label_template": "{}",
        "label_texts": None,
        "class_weighting": "none",
        "eval_batch_size": None,
        "self_training_rounds": "auto",
        "self_training_per_label": 64,
        "self_training_weight": 0.5,
        "self_training_epochs": 3,
        "self_training_pool_size": 4000,
        "self_training_max_gain": 0.1,
        "self_training_keep": "auto",
        "self_training_patience": 1,
        "encoder": "base",
    },
    "distill": {
        "teacher": "ensemble",
        "teacher_params": {},
        "student": "finetune",
        "student_params": {"class_weighting": "none", "epochs": 4, "patience": 2},
        "pool_size": 4000,
        "weight": 1.0,
        "label_shift": "none",
        "soft": True,
    },
    "ensemble": {
        "members": ["setfit", "finetune"],
        "member_params": {},
        "weights": None,
        "label_members": None,
    },
}


def _config_reference():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pipeline(method_params: dict) -> object:
    from flows.config import PipelineConfig

    return PipelineConfig.model_validate({"train": {"method_params": method_params}})


# ---------------------------------------------------------------- config load


def test_a_typo_fails_at_config_load_naming_method_and_setting():
    with pytest.raises(ValidationError) as err:
        _pipeline({"finetune": {"lrr": 1e-3}})
    (error,) = err.value.errors()
    assert error["loc"] == ("train", "method_params", "finetune", "lrr")
    assert "did you mean 'lr'?" in error["msg"]
    assert "allowed here: epochs, patience, monitor, lr, head_lr" in error["msg"]
    text = str(err.value)
    assert "train.method_params.finetune.lrr" in text


def test_bad_values_fail_at_config_load_naming_each_setting():
    with pytest.raises(ValidationError) as err:
        _pipeline(
            {
                "finetune": {"epochs": 0, "truncation": "middle"},
                "prototype": {"label_template": "no slot"},
                "nope": {},
            }
        )
    locs = {e["loc"][2:]: e["msg"] for e in err.value.errors()}
    assert set(locs) == {
        ("finetune", "epochs"),
        ("finetune", "truncation"),
        ("prototype", "label_template"),
        ("nope",),
    }
    assert "needs a {}" in locs[("prototype", "label_template")]
    assert "unknown method 'nope'; available: distill" in locs[("nope",)]


def test_nested_method_settings_are_checked_under_their_path():
    with pytest.raises(ValidationError) as err:
        _pipeline(
            {
                "ensemble": {
                    "members": ["naive_bayes", "finetune"],
                    "member_params": {"finetune": {"epocs": 2}},
                },
                "distill": {"teacher": "naive_bayes", "teacher_params": {"alpha": -1}},
                "setfit": {"head": "finetune", "finetune_params": {"lr": "fast"}},
            }
        )
    locs = {e["loc"][2:] for e in err.value.errors()}
    assert locs == {
        ("ensemble", "member_params", "finetune", "epocs"),
        ("distill", "teacher_params", "alpha"),
        ("setfit", "finetune_params", "lr"),
    }


def test_config_file_error_names_the_setting_path(tmp_path):
    from flows.config import PipelineConfig

    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  method_params:\n    hybrid:\n      blocks: [word, bigrams]\n")
    with pytest.raises(ConfigError, match=r"train\.method_params\.hybrid\.blocks.*unknown block"):
        PipelineConfig.from_file(path)


def test_an_ensemble_may_not_list_itself_in_a_config_but_a_saved_average_may():
    with pytest.raises(ValidationError, match=r"\['ensemble'\] cannot be members"):
        _pipeline({"ensemble": {"members": ["naive_bayes", "ensemble"]}})
    # the train stage's ``average`` run saves an ensemble whose member may be an ensemble run
    average = get_method("ensemble")(members=["ensemble", "naive_bayes"])
    assert average.members == ["ensemble", "naive_bayes"]


def test_valid_settings_stay_valid_and_are_kept_as_given():
    given = {
        "naive_bayes": {"alpha": 1},
        "tfidf_nb": {"alphas": (0.1, 1), "folds": 3},
        "hybrid": {"blocks": ["zero_shot", "word"], "weights": None, "Cs": [10, 1]},
        "finetune": {"lr": "1e-4", "batch_size": 0, "head_lr": None, "epochs": 2.0},
        "setfit": {"head": "finetune", "finetune_params": {"epochs": 1}},
        "prototype": {"label_texts": {"joy": "happiness"}, "self_training_keep": "last"},
        "distill": {"teacher": "naive_bayes", "teacher_params": None, "student": "tfidf_nb"},
        "ensemble": {"members": None, "member_params": None, "weights": [1, 2]},
        "embed_lr": {"class_weight": "balanced", "embed_options": {"long_text": "chunks"}},
        "knn": {"max_k": 3},
    }
    snapshot = json.loads(json.dumps(given, default=list))
    cfg = _pipeline(given)
    assert json.loads(json.dumps(cfg.train.method_params, default=list)) == snapshot
    for name, params in given.items():
        get_method(name)(**params)  # the methods take them too


def test_defaults_reproduce_the_former_constructor_defaults():
    assert sorted(REGISTRY) == sorted(DEFAULTS)
    for name, expected in DEFAULTS.items():
        got = get_method(name)().get_params()
        assert list(got) == list(expected), name  # also the order method.json is written in
        assert got == expected, name


def test_settings_are_validated_and_normalised_as_before():
    hybrid = get_method("hybrid")(blocks=["zero_shot", "word"], Cs=[10, 1], prior_weights=[5, 2])
    assert hybrid.blocks == ["word", "zero_shot"]
    assert hybrid.Cs == [1.0, 10.0] and hybrid.prior_weights == [0.0, 2.0, 5.0]
    ft = get_method("finetune")(lr="3e-4", epochs=2)
    assert ft.lr == 3e-4 and ft.epochs == 2
    distill = get_method("distill")(student="tfidf_nb")
    assert distill.student_params == {} and distill.teacher_params == {}


def test_direct_construction_names_the_setting():
    with pytest.raises(ConfigError, match=r"train\.method_params\.finetune\.lrr: unknown setting"):
        get_method("finetune")(lrr=1e-3)
    with pytest.raises(ConfigError, match=r"train\.method_params\.knn\.max_k=0: "):
        get_method("knn")(max_k=0)
    with pytest.raises(ConfigError, match=r"train\.method_params\.ensemble\.members is empty"):
        get_method("ensemble")(members=[])
    with pytest.raises(ConfigError, match=r"embed_lr\.embed_options\.chunk_sise: unknown setting"):
        get_method("embed_lr")(embed_options={"chunk_sise": 100})


def test_a_method_signature_lists_its_settings():
    params = inspect.signature(get_method("embed_lr")).parameters
    assert list(params) == list(DEFAULTS["embed_lr"])
    assert params["C"].default == 10.0


def test_check_method_params_skips_methods_without_settings():
    from label_pipeline.methods.base import Method, register

    class _Own(Method):
        name = "test_own_init"

        def __init__(self, anything: int = 0) -> None:
            self.anything = anything

        fit = predict_proba = save = load = None  # type: ignore[assignment]

    register(_Own)
    try:
        check_method_params({"test_own_init": {"whatever": 1}})
    finally:
        REGISTRY.pop("test_own_init")


# ---------------------------------------------------------------- registries


def test_each_registry_lists_its_members():
    assert METHODS.names() == METHOD_NAMES
    assert available_augmenters() == ["back_translation", "contextual", "random_word", "synonym"]
    assert available_backends() == ["embedding", "fill_mask", "nli"]
    assert active.STRATEGIES == (
        "random",
        "least_confidence",
        "margin",
        "entropy",
        "label_uncertainty",
        "diverse",
        "k_center",
    )
    for registry in (METHODS, AUGMENTERS, BACKENDS, active.QUERY_STRATEGIES):
        assert isinstance(registry, Registry)
        for name, cls in registry.members().items():
            assert cls.name == name
            assert issubclass(cls.Settings, PluginSettings), name


def test_unknown_names_fail_listing_the_members():
    with pytest.raises(ConfigError, match="unknown method 'nb'; available: distill, embed_lr"):
        get_method("nb")
    with pytest.raises(
        ConfigError, match="not a known backend; choose one of embedding, fill_mask"
    ):
        get_backend("nope")
    with pytest.raises(
        ConfigError, match="choose one of back_translation, contextual, random_word"
    ):
        get_augmenter("nope")


def test_every_settings_model_documents_every_field():
    field_description = _config_reference().field_description
    models: list[type[BaseModel]] = [
        *(cls.Settings for cls in METHODS.members().values()),
        *(cls.Settings for cls in AUGMENTERS.members().values()),
        *(cls.Settings for cls in BACKENDS.members().values()),
        *(cls.Settings for cls in active.QUERY_STRATEGIES.members().values()),
    ]
    assert all(issubclass(m, MethodSettings) for m in models[: len(METHOD_NAMES)])
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if not field_description(model, name).strip()
    ]
    assert missing == []


def test_augment_config_has_one_section_per_augmenter_of_its_settings_type():
    from tasks.augment import AugmentConfig

    sections = {
        name: info.annotation
        for name, info in AugmentConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, PluginSettings)
    }
    assert sections == {name: get_augmenter(name).Settings for name in available_augmenters()}
    assert get_augmenter("synonym").config_class is get_augmenter("synonym").Settings


def test_backend_options_are_read_from_the_zero_shot_fields_they_are_named_after():
    from label_pipeline.devices import choose_device
    from label_pipeline.zeroshot.loading import ZeroShotConfig

    cfg = ZeroShotConfig(fill_mask_prompt="About {}.", verbalizers={"joy": "happy"})
    assert get_backend("fill_mask").options_from_config(cfg) == {
        "fill_mask_prompt": "About {}.",
        "verbalizers": {"joy": "happy"},
    }
    assert get_backend("nli").options_from_config(cfg) == {
        "hypothesis_template": "This text is about {}."
    }
    cpu = choose_device(cuda_available=False, bf16_supported=False, mps_available=False)
    # the options are checked before any model is loaded
    with pytest.raises(ConfigError, match=r"zero_shot\.hypothesis_template='no slot' has no"):
        get_backend("nli")("/nonexistent", cpu, hypothesis_template="no slot")
    with pytest.raises(ConfigError, match=r"zero_shot\.temperature=0: "):
        get_backend("embedding")("/nonexistent", cpu, temperature=0)


def test_query_strategies_declare_where_they_apply():
    from tasks.suggest import SuggestConfig

    assert active.SINGLE_LABEL_ONLY == ("least_confidence", "margin", "entropy")
    assert active.NEEDS_EMBEDDINGS == ("diverse", "k_center")
    choices = typing.get_args(SuggestConfig.model_fields["strategy"].annotation)
    assert choices == ("auto", *active.STRATEGIES)
    assert set(active.QUERY_STRATEGIES.settings("diverse").model_fields) == {
        "seed",
        "candidate_factor",
    }
    with pytest.raises(ConfigError, match="suggest.candidate_factor=0"):
        active.suggest("diverse", [[0.5, 0.5]], ["a", "b"], False, 1, candidate_factor=0)
