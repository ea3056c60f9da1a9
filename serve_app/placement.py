"""Which resources Ray gave this replica, and the torch device that follows from them.

Ray sets CUDA_VISIBLE_DEVICES to the replica's GPUs, so inside the replica the
assigned GPU is always `cuda:0`. Where CUDA is absent (tests that fake GPUs with
`ray start --num-gpus`), the runtime runs on CPU and still reports the ids.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Placement:
    gpu_ids: tuple[str, ...]
    cuda_visible_devices: str | None
    num_cpus: float
    replica: str
    node_id: str

    @classmethod
    def detect(cls) -> Placement:
        """Read the current Ray worker's assignment (empty outside Ray)."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return cls((), os.environ.get("CUDA_VISIBLE_DEVICES"), float(os.cpu_count() or 1), "", "")
        context = ray.get_runtime_context()
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - not inside a Serve replica
            replica = ""
        return cls(
            gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            num_cpus=float(context.get_assigned_resources().get("CPU", 1.0)),
            replica=replica,
            node_id=context.get_node_id(),
        )

    def torch_device(self, preference: str) -> torch.device:
        import torch  # here, not at import: the Triton runtime's replicas never load it (~1 s)

        if preference == "cpu" or (preference == "auto" and not self.gpu_ids):
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if preference == "cuda":
            raise RuntimeError(
                "device: cuda was requested but CUDA is not available in this replica; "
                "set ray_actor_options.num_gpus: 1 on a GPU node, or device: auto"
            )
        return torch.device("cpu")

    def threads(self) -> int:
        return max(1, int(self.num_cpus))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
