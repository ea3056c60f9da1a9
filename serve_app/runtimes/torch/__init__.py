"""The torch runtime: the Triton repository executed with plain PyTorch (`runtime.TorchRuntime`).

Importing this package imports no torch: only `runtime` and `torchscript` do.
"""
