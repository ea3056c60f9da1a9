"""The Triton runtime: Triton embedded in-process (`runtime.TritonRuntime`, its server configured
in `server`), with its two request paths (`extension_caller`, and `bindings_caller` where the
extension is not built)."""
