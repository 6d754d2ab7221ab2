"""The flow's parameters as a person and a deployment run meet them: the run form's schema
(every field described, with its default, device once, most-changed fields first), partial
parameters merged onto the deployment's, and the store every worker shares."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from flows.config import PipelineConfig, run_form_schema
from label_pipeline.config_schema import form_leaves, form_schema
from label_pipeline.run_settings import (
    STORE_ENV,
    changed_settings,
    deep_merge,
    set_settings,
    shared_store,
    with_deployment_settings,
)


def _plain_leaves(schema: dict) -> list[tuple[str, dict]]:
    """Leaves of pydantic's own JSON schema of PipelineConfig (refs resolved)."""
    defs = schema.get("$defs", {})
    out = []

    def walk(node: dict, path: str) -> None:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        if node.get("type") == "object" and node.get("properties"):
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}" if path else key)
        else:
            out.append((path, node))

    walk(schema, "")
    return out


def test_every_leaf_of_the_flow_parameter_schema_has_a_description_and_a_default():
    from prefect.utilities.callables import parameter_schema

    from flows.label_pipeline import label_pipeline

    schema = parameter_schema(label_pipeline).model_dump_for_openapi()
    config = schema["properties"]["config"]
    assert config["description"]
    leaves = form_leaves(config)
    before = _plain_leaves(PipelineConfig.model_json_schema())
    # pydantic's own schema: no field has a description; the form: every one, and fewer
    # fields (the seven stage device sections are left out)
    assert sum(bool(n.get("description")) for _, n in before) == 0
    stage_devices = [
        name
        for name, info in PipelineConfig.model_fields.items()
        if name != "device" and "device" in getattr(info.annotation, "model_fields", {})
    ]
    assert len(stage_devices) == 7
    assert len(leaves) == len(before) - 5 * len(stage_devices)
    missing = [p for p, n in leaves if not n.get("description") or "default" not in n]
    assert missing == []
    # no reference left for the UI to chase
    assert "$ref" not in str(config)
    assert not schema.get("definitions")


def test_lists_and_dicts_show_their_defaults_and_device_appears_once():
    leaves = dict(form_leaves(run_form_schema()))
    assert leaves["train.methods"]["default"] == PipelineConfig().train.methods
    assert leaves["train.slices"]["default"] == ["all"]
    assert leaves["ingest.label_map"]["default"] == {}
    devices = {p for p in leaves if p.endswith(".device") or ".device." in p}
    assert devices == {"device.device"}
    assert {p.rsplit(".", 1)[0] for p in leaves if p.startswith("device.")} == {"device"}


def test_the_fields_users_change_most_come_first():
    schema = run_form_schema()
    top = sorted(schema["properties"], key=lambda k: schema["properties"][k]["position"])
    assert top[:4] == ["ingest", "train", "split", "review"]
    order = [p for p, _ in form_leaves(schema)]
    assert order[:5] == [
        "ingest.path",
        "ingest.format",
        "ingest.text_column",
        "ingest.text_columns",
        "ingest.label_column",
    ]
    assert order.index("train.methods") < order.index("train.slices") < order.index("split.seed")
    # the descriptions are the docstrings' plain text (the UI shows no markup)
    assert "``" not in str(schema) and ":class:" not in str(schema)


def test_the_server_check_accepts_partial_configs_and_refuses_typos():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows.label_pipeline import label_pipeline

    schema = parameter_schema(label_pipeline).model_dump_for_openapi()
    validate({"config": {"ingest": {"sample_rows": 5}}}, schema, raise_on_error=True)
    # a stage's own device settings are not in the form but a run may still send them
    validate({"config": {"zero_shot": {"device": {"device": "cpu"}}}}, schema, raise_on_error=True)
    for bad in (
        {"config": {"ingest": {"sample_rowz": 5}}},
        {"config": {"zero_shot": {"devise": {}}}},
        {"config": {"runner": {"kind": "spark"}}},
    ):
        with pytest.raises(ValidationError):
            validate(bad, schema, raise_on_error=True)


class _Inner(BaseModel):
    """Inner settings.

    Attributes:
        a: the a. ``x`` marks it.
        items: some items.
    """

    a: int = 1
    items: list[str] = ["x", "y"]


class _Outer(BaseModel):
    """Outer settings.

    Attributes:
        inner: the inner section.
        secret: hidden from the form.
    """

    inner: _Inner = _Inner()
    secret: int = 3


def test_form_schema_describes_orders_and_hides():
    schema = form_schema(_Outer, first={"": ["secret", "inner"]}, hidden=["inner.items"])
    assert [
        k for k, _ in sorted(schema["properties"].items(), key=lambda kv: kv[1]["position"])
    ] == [
        "secret",
        "inner",
    ]
    inner = schema["properties"]["inner"]
    assert inner["description"] == "the inner section." and "default" not in inner
    assert inner["properties"]["a"] == {
        "title": "A",
        "type": "integer",
        "description": "the a. x marks it.",
        "default": 1,
        "position": 0,
    }
    assert "items" not in inner["properties"]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"device": {"device": "cuda", "batch_size_gpu": 256}, "train": {"methods": ["a", "b"]}}
    over = {"device": {"batch_size_gpu": 64}, "train": {"methods": ["c"]}, "store": "s"}
    assert deep_merge(base, over) == {
        "device": {"device": "cuda", "batch_size_gpu": 64},
        "train": {"methods": ["c"]},
        "store": "s",
    }
    assert base["device"]["batch_size_gpu"] == 256  # inputs untouched


def test_outside_a_deployment_run_the_config_is_the_run_s_own():
    cfg = PipelineConfig.model_validate({"ingest": {"sample_rows": 5}})
    same, deployment, changes = with_deployment_settings(cfg, "config")
    assert same is cfg and deployment is None and changes == []
    assert set_settings(cfg) == ["ingest.sample_rows"]
    assert changed_settings(cfg) == ["ingest.sample_rows=5"]
    assert changed_settings(PipelineConfig()) == []


def test_the_store_comes_from_the_config_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert shared_store(".store") == (".store", "default")
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "shared"))
    assert shared_store(".store") == (str(tmp_path / "shared"), f"${STORE_ENV}")
    # a store the run names itself wins
    assert shared_store("s3://bucket/store") == ("s3://bucket/store", "config.store")


def test_a_stage_device_equal_to_the_defaults_takes_the_pipeline_s():
    from flows.label_pipeline import with_device
    from label_pipeline.devices import DeviceConfig

    pipeline = DeviceConfig(device="cpu", batch_size_cpu=8)
    cfg = PipelineConfig.model_validate({"label": {"device": DeviceConfig().model_dump()}})
    assert with_device(cfg.label, pipeline).device == pipeline
    own = PipelineConfig.model_validate({"label": {"device": {"device": "cpu"}}})
    assert with_device(own.label, DeviceConfig(device="cuda")).device.device == "cpu"


def test_a_deployment_run_keeps_the_deployment_s_settings_it_does_not_change(monkeypatch):
    from types import SimpleNamespace

    from label_pipeline import run_settings

    base = {
        "device": {"device": "cuda", "allow_cpu_fallback": False, "batch_size_gpu": 256},
        "adapt": {"batch_size": 64, "epochs": 3},
        "train": {"methods": ["hybrid", "finetune"]},
    }
    fake = SimpleNamespace(name="gpu", parameters={"config": base})
    monkeypatch.setattr(run_settings, "_deployment", lambda: fake)
    # what Prefect hands the run for --params '{"config": {"ingest": {"sample_rows": 5}}}'
    one = PipelineConfig.model_validate({"ingest": {"sample_rows": 5}, "train": {"slices": ["8"]}})
    cfg, name, changes = with_deployment_settings(one, "config")
    assert name == "gpu" and changes == ["ingest.sample_rows", "train.slices"]
    assert cfg.device.device == "cuda" and cfg.device.batch_size_gpu == 256
    assert not cfg.device.allow_cpu_fallback
    assert (cfg.adapt.batch_size, cfg.adapt.epochs) == (64, 3)
    assert cfg.train.methods == ["hybrid", "finetune"] and cfg.train.slices == ["8"]
    assert cfg.ingest.sample_rows == 5
    # a form sends every field (the deployment's values, the defaults, one edit): the log
    # names the one edit
    form = PipelineConfig.model_validate(base).model_dump(mode="json")
    form["ingest"]["sample_rows"] = 5
    cfg, _, changes = with_deployment_settings(PipelineConfig.model_validate(form), "config")
    assert changes == ["ingest.sample_rows"] and cfg.device.batch_size_gpu == 256


def test_a_stage_encoder_equal_to_its_default_takes_the_pipeline_s():
    from flows.label_pipeline import with_encoder

    strong = "sentence-transformers/all-mpnet-base-v2"
    form = PipelineConfig().model_dump(mode="json")  # a form sends every default
    cfg = PipelineConfig.model_validate(form)
    assert "encoder" in cfg.train.model_fields_set
    assert with_encoder("train", cfg.train, strong).encoder == strong
    own = PipelineConfig.model_validate({"train": {"encoder": "my/encoder"}})
    assert with_encoder("train", own.train, strong).encoder == "my/encoder"
