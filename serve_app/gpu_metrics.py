"""The replica's GPUs as NVML reports them: utilisation and memory, for metrics and for
on-demand placement's measure of what a model's load takes (GPU replicas only)."""

from __future__ import annotations

import logging
from typing import Any

from serve_app.metric_series import Sample

logger = logging.getLogger(__name__)


class GpuReader:
    """Utilisation and memory of the replica's GPUs from NVML, as Triton reports them."""

    def __init__(self, nvml: Any, handles: dict[str, Any]) -> None:
        self._nvml = nvml
        self._handles = handles  # GPU UUID → NVML handle

    @classmethod
    def open(cls, gpu_ids: tuple[str, ...]) -> GpuReader | None:
        """NVML handles for Ray's GPU ids (indices or UUIDs); None, logged, where NVML is missing."""
        try:
            nvml = _import_nvml()
            nvml.nvmlInit()
            handles = {}
            for gpu in gpu_ids:
                handle = (
                    nvml.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith(("GPU-", "MIG-"))
                    else nvml.nvmlDeviceGetHandleByIndex(int(gpu))
                )  # fmt: skip
                uuid = nvml.nvmlDeviceGetUUID(handle)
                handles[uuid.decode() if isinstance(uuid, bytes) else uuid] = handle
        except Exception as exc:  # noqa: BLE001 - no GPU metrics, everything else still works
            logger.warning("no GPU metrics for GPUs %s: NVML unavailable (%s)", ",".join(gpu_ids), exc)
            return None
        return cls(nvml, handles)

    def memory_used(self) -> int:
        """Bytes in use on the replica's GPUs (what a model's load adds, on-demand placement)."""
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(handle).used for handle in self._handles.values())

    def read(self) -> list[Sample]:
        samples = []
        for uuid, handle in self._handles.items():
            tags = {"gpu_uuid": uuid}
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            samples += [
                Sample("nv_gpu_utilization", utilization, tags),
                Sample("nv_gpu_memory_used_bytes", memory.used, tags),
                Sample("nv_gpu_memory_total_bytes", memory.total, tags),
            ]
        return samples


def _import_nvml() -> Any:
    """`pynvml` (nvidia-ml-py) where installed, else the copy Ray ships for its own GPU metrics."""
    try:
        import pynvml
    except ImportError:
        from ray._private.thirdparty import pynvml
    return pynvml
