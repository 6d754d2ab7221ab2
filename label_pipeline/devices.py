"""One place that chooses the device, precision and batch size for model work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from label_pipeline.errors import ConfigError


class DeviceConfig(BaseModel):
    """Where model work runs.

    Attributes:
        device: ``auto`` picks cuda > mps > cpu; or force one of ``cuda``, ``mps``, ``cpu``.
        precision: ``auto`` uses bf16 on GPUs that support it, else fp16 on cuda, fp32 elsewhere.
        allow_cpu_fallback: when ``device`` asks for a GPU that is absent, run on the CPU
            (True) or fail with a clear message (False).
        batch_size_cpu / batch_size_gpu: default batch sizes for inference-style work.
    """

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    allow_cpu_fallback: bool = True
    batch_size_cpu: int = Field(32, ge=1)
    batch_size_gpu: int = Field(128, ge=1)


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "mps" or "cpu"
    precision: str  # "fp32", "fp16" or "bf16"
    batch_size: int
    reason: str

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            self.precision
        ]

    def describe(self) -> str:
        return f"{self.device} / {self.precision} / batch {self.batch_size} ({self.reason})"


def _probe() -> tuple[bool, bool, bool]:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return cuda, bf16, mps


def choose_device(
    cfg: DeviceConfig | None = None,
    *,
    cuda_available: bool | None = None,
    bf16_supported: bool | None = None,
    mps_available: bool | None = None,
) -> DeviceChoice:
    """Pick device, precision and batch size from the config and the hardware present.

    The ``*_available`` arguments override the hardware probe (tests use them).
    """
    cfg = cfg or DeviceConfig()
    if cuda_available is None or bf16_supported is None or mps_available is None:
        c, b, m = _probe()
        cuda_available = c if cuda_available is None else cuda_available
        bf16_supported = b if bf16_supported is None else bf16_supported
        mps_available = m if mps_available is None else mps_available

    want = cfg.device
    if want == "auto":
        device = "cuda" if cuda_available else "mps" if mps_available else "cpu"
        reason = "auto-selected"
    elif want == "cuda" and not cuda_available or want == "mps" and not mps_available:
        if not cfg.allow_cpu_fallback:
            raise ConfigError(
                f"device.device={want!r} but no {want.upper()} device is visible on this worker. "
                "Run this deployment on a worker with that GPU, or set device.allow_cpu_fallback=true "
                "(or device.device='auto') to train on the CPU."
            )
        device, reason = "cpu", f"{want} requested but absent; CPU fallback allowed"
    else:
        device, reason = want, "requested"

    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if bf16_supported else "fp16") if device == "cuda" else "fp32"
    elif precision in {"fp16", "bf16"} and device == "cpu":
        precision, reason = "fp32", reason + f"; {cfg.precision} not used on CPU"
    elif precision == "bf16" and device == "cuda" and not bf16_supported:
        precision, reason = "fp16", reason + "; bf16 unsupported by this GPU, fp16 used"

    batch = cfg.batch_size_gpu if device in {"cuda", "mps"} else cfg.batch_size_cpu
    return DeviceChoice(device=device, precision=precision, batch_size=batch, reason=reason)
