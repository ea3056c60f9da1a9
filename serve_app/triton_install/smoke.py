"""`python -m serve_app.triton_install check`: serve a TorchScript model through the install."""

from __future__ import annotations

import tempfile
from pathlib import Path

from serve_app.triton_install.build import InstallError
from serve_app.triton_layout import backend_directory, pytorch_backend_problem, requests_extension_path

_CONFIG = """platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
"""


def check(backends: str | None = None) -> None:
    """Start an in-process server, run a traced Linear(16, 4) natively, compare with torch.

    `backends`: another install's backend directory (the NGC image's /opt/tritonserver/backends).
    """
    import numpy as np
    import torch

    try:
        import tritonserver
    except ImportError as error:
        raise InstallError(f"{error}: run python -m serve_app.triton_install install") from error
    problem = None if backends else pytorch_backend_problem()
    backends = backends or backend_directory()
    if backends is None or problem:
        raise InstallError(
            problem or "Triton is not installed here: run python -m serve_app.triton_install install"
        )
    with tempfile.TemporaryDirectory(prefix="serve-app-triton-check-") as scratch:
        model_dir = Path(scratch, "linear")
        (model_dir / "1").mkdir(parents=True)
        module = torch.nn.Linear(16, 4).eval()
        torch.jit.trace(module, torch.zeros(1, 16)).save(str(model_dir / "1" / "model.pt"))
        (model_dir / "config.pbtxt").write_text(_CONFIG)
        options = tritonserver.Options(
            model_repository=scratch,
            model_control_mode=tritonserver.ModelControlMode.EXPLICIT,
            pinned_memory_pool_size=0,
            gpu_metrics=False,
            backend_directory=backends,
        )
        server = tritonserver.Server(options).start(wait_until_ready=True)
        try:
            server.load("linear")
            batch = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
            (response,) = server.model("linear").infer(inputs={"input__0": batch})
            output = np.from_dlpack(response.outputs["output__0"])
            server_version = server.metadata()["version"]
        except tritonserver.TritonError as error:
            raise InstallError(f"Triton check failed: {error}") from error
        finally:
            server.stop()
        with torch.inference_mode():
            expected = module(torch.from_numpy(batch)).numpy()
    if not np.allclose(output, expected, atol=1e-5):
        raise InstallError("TorchScript output through Triton's PyTorch backend differs from torch")
    print(f"tritonserver {tritonserver.__version__}, server {server_version}, backends {backends}")
    print(f"numpy {np.__version__}, torch {torch.__version__}: Triton's PyTorch backend OK")
    from serve_app.runtimes.triton.extension_caller import extension

    if extension() is None:
        print("serve_app's request extension is not built: requests take the bindings' slower path")
    else:
        print(f"serve_app's request extension loads ({requests_extension_path()})")
