"""Test configuration: offline, isolated Prefect home, one Prefect server per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Must happen before anything imports prefect or huggingface_hub.
_PREFECT_HOME = tempfile.mkdtemp(prefix="lp-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_server():
    """One ephemeral Prefect API for the whole session (costs ~10-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory) -> Path:
    """A tiny random BERT masked LM with its tokenizer, built once per session."""
    from label_pipeline.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), "mlm")
