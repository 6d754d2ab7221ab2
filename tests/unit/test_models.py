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
