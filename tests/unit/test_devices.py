"""Device, precision and batch-size choice, including the GPU paths (hardware overridden)."""

from __future__ import annotations

import pytest

from label_pipeline.devices import DeviceConfig, choose_device
from label_pipeline.errors import ConfigError


def _choose(cuda=False, bf16=False, mps=False, **cfg):
    return choose_device(
        DeviceConfig(**cfg), cuda_available=cuda, bf16_supported=bf16, mps_available=mps
    )


def test_auto_prefers_cuda_then_mps_then_cpu():
    assert _choose(cuda=True, mps=True).device == "cuda"
    assert _choose(mps=True).device == "mps"
    assert _choose().device == "cpu"


@pytest.mark.parametrize(
    ("bf16", "expected"),
    [(True, "bf16"), (False, "fp16")],
)
def test_auto_precision_on_cuda_follows_bf16_support(bf16, expected):
    choice = _choose(cuda=True, bf16=bf16)
    assert choice.precision == expected
    assert choice.torch_dtype is not None


def test_cpu_and_mps_run_in_fp32_by_default():
    assert _choose().precision == "fp32"
    assert _choose(mps=True).precision == "fp32"


def test_gpu_batch_size_on_gpu_cpu_batch_size_on_cpu():
    cfg = {"batch_size_cpu": 8, "batch_size_gpu": 256}
    assert _choose(cuda=True, **cfg).batch_size == 256
    assert _choose(mps=True, **cfg).batch_size == 256
    assert _choose(**cfg).batch_size == 8


def test_requested_bf16_on_gpu_without_bf16_falls_back_to_fp16():
    choice = _choose(cuda=True, bf16=False, device="cuda", precision="bf16")
    assert (choice.device, choice.precision) == ("cuda", "fp16")
    assert "bf16 unsupported" in choice.reason


def test_half_precision_is_not_used_on_cpu():
    for precision in ("fp16", "bf16"):
        choice = _choose(device="cpu", precision=precision)
        assert (choice.device, choice.precision) == ("cpu", "fp32")
        assert precision in choice.reason


def test_forced_cpu_ignores_a_present_gpu():
    assert _choose(cuda=True, bf16=True, device="cpu").device == "cpu"


@pytest.mark.parametrize("want", ["cuda", "mps"])
def test_missing_gpu_without_fallback_names_the_parameters(want):
    with pytest.raises(ConfigError) as err:
        _choose(device=want, allow_cpu_fallback=False)
    msg = str(err.value)
    assert "device.device" in msg and "allow_cpu_fallback" in msg and want.upper() in msg


def test_missing_gpu_with_fallback_runs_on_cpu_and_says_why():
    choice = _choose(device="cuda", allow_cpu_fallback=True, precision="bf16")
    assert (choice.device, choice.precision) == ("cpu", "fp32")
    assert "cuda requested but absent" in choice.reason
    assert "cpu" in choice.describe()


def test_gpu_deployment_parameters_fail_fast_in_the_flow(tmp_path, monkeypatch):
    """The flow checks the device before any stage: a CUDA-only config on this CPU machine
    stops with the ConfigError, and no stage directory is created."""
    import label_pipeline.devices as devices
    from flows.config import PipelineConfig
    from flows.label_pipeline import label_pipeline

    monkeypatch.setattr(devices, "_probe", lambda: (False, False, False))
    cfg = PipelineConfig.model_validate(
        {
            "store": str(tmp_path / "store"),
            "device": {"device": "cuda", "allow_cpu_fallback": False},
        }
    )
    with pytest.raises(ConfigError, match="allow_cpu_fallback"):
        label_pipeline.fn(config=cfg)
    assert not (tmp_path / "store").exists()
