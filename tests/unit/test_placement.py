"""The torch device follows the GPUs Ray assigned, never a GPU it did not."""

from __future__ import annotations

import pytest
import torch

from serve_app.placement import Placement


def placement(*gpu_ids: str) -> Placement:
    return Placement(gpu_ids, ",".join(gpu_ids) or None, 2.0, "r1", "n1")


def test_auto_without_an_assigned_gpu_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement().torch_device("auto") == torch.device("cpu")
    assert placement("3").torch_device("auto") == torch.device("cuda:0")
    assert placement("3").torch_device("cpu") == torch.device("cpu")


def test_assigned_gpu_without_cuda_falls_back_to_cpu_unless_cuda_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement("1").torch_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        placement("1").torch_device("cuda")


def test_threads_follow_the_cpu_allotment() -> None:
    assert placement().threads() == 2
    assert Placement((), None, 0.5, "", "").threads() == 1
