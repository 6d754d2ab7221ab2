import pytest

from label_pipeline.errors import ModelNotFoundError
from label_pipeline.models import resolve_model


def test_local_directory_resolves(tiny_mlm_dir):
    assert resolve_model(str(tiny_mlm_dir)) == tiny_mlm_dir.resolve()


def test_bundled_minilm_resolves_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert (path / "config.json").is_file()
    assert path == resolve_model("all-MiniLM-L6-v2")


def test_unresolvable_reference_explains_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("no-such-org/no-such-model", purpose="zero_shot.model")
    msg = str(err.value)
    assert "zero_shot.model" in msg and "no-such-org/no-such-model" in msg
    assert "HF_HUB_OFFLINE" in msg and "Hugging Face cache" in msg and "save_pretrained" in msg


def test_directory_without_config_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_concurrent_loads_leave_transformers_globals_intact(tiny_mlm_dir):
    """from_pretrained patches process-wide globals while it loads; loads in several threads
    at once (thread or Dask runners) must not leave them patched."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from transformers import PreTrainedModel

    from label_pipeline.mlm import load_masked_lm

    tie_weights, normal_ = PreTrainedModel.tie_weights, torch.nn.init.normal_
    with ThreadPoolExecutor(max_workers=6) as pool:
        loaded = list(pool.map(lambda _: load_masked_lm(tiny_mlm_dir), range(18)))
    assert PreTrainedModel.tie_weights is tie_weights
    assert torch.nn.init.normal_ is normal_
    for mlm in loaded:
        out, emb = mlm.model.get_output_embeddings(), mlm.model.get_input_embeddings()
        assert out.weight.data_ptr() == emb.weight.data_ptr()


def test_quiet_loading_hides_the_load_report_of_a_new_head_and_restores_verbosity(tiny_mlm_dir):
    import logging

    import transformers
    from transformers import AutoModelForSequenceClassification

    from label_pipeline.models import model_loading

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    root = transformers.logging.get_logger()  # the library's root logger: every module's parent
    root.addHandler(handler)
    transformers.logging.set_verbosity_warning()
    try:
        with model_loading():
            AutoModelForSequenceClassification.from_pretrained(str(tiny_mlm_dir), num_labels=3)
        assert any("LOAD REPORT" in m for m in seen)  # the new head is reported by default
        seen.clear()
        with model_loading(quiet=True):
            AutoModelForSequenceClassification.from_pretrained(str(tiny_mlm_dir), num_labels=3)
        assert not any("LOAD REPORT" in m for m in seen)
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
    finally:
        root.removeHandler(handler)
