"""Triton python-backend shim serving TorchScript models (``model.py``, loaded by Triton, not imported)."""
