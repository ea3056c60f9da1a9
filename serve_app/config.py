"""Application arguments (`applications[].args` in the Serve config), validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from ray.serve.exceptions import RayServeException

from serve_app.storage import RepositoryURL, is_url, parse_url


class TritonOptions(BaseModel):
    """Options of the in-process `tritonserver.Server` (runtime: triton)."""

    model_config = ConfigDict(extra="forbid")

    strict_model_config: bool = Field(
        True, description="Use config.pbtxt as is; False lets Triton auto-complete it (slower load)."
    )
    log_verbose: int = Field(0, ge=0, description="Triton's verbose log level.")
    log_info: bool = Field(False, description="Triton's info log lines.")
    exit_timeout_s: PositiveInt = Field(
        20,
        description="How long Triton waits for requests in flight at stop; keep below Serve's "
        "graceful_shutdown_timeout_s.",
    )
    backend_directory: str | None = Field(
        None, description="Triton backends; default: the NGC image's, else the CPU build's."
    )
    metrics: bool = Field(
        False,
        description="Triton's own in-process metric collection (CPU/GPU pollers); no port serves "
        "it (in-process Triton has no port 8002). The exported nv_inference_* metrics come from Triton's "
        "statistics whatever this says: see args.metrics.",
    )


class MetricsOptions(BaseModel):
    """Triton's `nv_inference_*` metrics from every replica, exported through Ray's metrics agent."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Export the metrics (README: Metrics).")
    interval_s: float = Field(
        2.0, gt=0, le=60, description="How often a replica turns its runtime's statistics into metrics."
    )


class PlacementOptions(BaseModel):
    """Where models are loaded: on every replica at start, or on demand within a budget per replica."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["all", "on_demand"] = Field(
        "all",
        description="all: every replica loads every model at start; on_demand: a replica loads a model "
        "at the first request for it, and evicts idle ones to stay within its budget (docs/placement.md).",
    )
    max_models_per_replica: PositiveInt | None = Field(None, description="on_demand: models a replica holds.")
    memory_budget_bytes: PositiveInt | None = Field(
        None,
        description="on_demand: bytes of models a replica holds (host memory on CPU replicas, GPU memory "
        "on GPU replicas, measured at each load); a model larger than this is refused with 507.",
    )
    idle_unload_s: PositiveFloat | None = Field(
        None, description="on_demand: unload a model no request used for this long."
    )
    warm: list[str] = Field(
        default_factory=list, description="on_demand: models every replica loads at start."
    )


class AppArgs(BaseModel):
    """What a user sets under `args:` in configs/app.yaml."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_repository: Path | RepositoryURL = Field(
        description="Triton model repository: a directory, absolute or relative to where `serve run` "
        "starts, or object storage as Triton names it (s3://, gs://, as://; see README)."
    )
    runtime: Literal["torch", "triton", "auto"] = Field(
        "auto", description="triton: in-process Triton; torch: embedded PyTorch; auto: triton if it starts."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the replica's GPU when Ray assigned one and CUDA works, else CPU."
    )
    model_control: bool = Field(
        False,
        description="Enable POST /v2/repository/models/{m}/load and /unload, for the whole deployment.",
    )
    repository_poll_s: PositiveFloat | None = Field(
        None,
        description="Poll the repository this often (Triton's POLL mode, for the deployment): models "
        "added, changed or removed are loaded, reloaded or unloaded on every replica. Off by default.",
    )
    max_request_bytes: PositiveInt = Field(64 * 2**20, description="Larger request bodies get 413.")
    torch_threads: PositiveInt | None = Field(
        None, description="torch intra-op threads; default: the replica's num_cpus."
    )
    stop_timeout_s: float = Field(25.0, gt=0, description="Bound on the runtime's stop at replica shutdown.")
    execution_timeout_s: float = Field(
        300.0,
        gt=0,
        description="torch runtime: a model execution running longer is wedged; the "
        "health check (every 10 s) then fails and Serve replaces the replica. Raise it above your "
        "slowest legitimate batch.",
    )
    model_placement: PlacementOptions = Field(
        default_factory=PlacementOptions, description="Which models each replica loads, and when."
    )
    triton: TritonOptions = Field(
        default_factory=TritonOptions, description="Options of the in-process Triton (runtime: triton)."
    )
    metrics: MetricsOptions = Field(
        default_factory=MetricsOptions, description="Triton's metrics via Ray's metrics (README: Metrics)."
    )

    @field_validator("model_repository", mode="before")
    @classmethod
    def _repository_url(cls, value: Any) -> Any:
        return parse_url(value) if isinstance(value, str) and is_url(value) else value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, path: Path | RepositoryURL) -> Path | RepositoryURL:
        if isinstance(path, RepositoryURL):
            return path
        resolved = path.expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(
                f"'{path}' is not a directory (resolved to {resolved}); set "
                "applications[].args.model_repository to a Triton model repository, absolute or "
                "relative to the directory the Ray cluster started in (where `serve run` starts "
                "its own Ray: the directory you run it from)"
            )
        return resolved


class InvalidArgsError(RayServeException, ValueError):
    """Bad `applications[].args`: one self-contained line per problem, naming field and fix.

    A RayServeException: Serve's build task reports those as their message alone (no
    traceback) and does not retry the build.
    """


def parse_args(raw: dict[str, Any]) -> AppArgs:
    """Validate raw `args` from the Serve config, with messages that name the YAML path."""
    try:
        return AppArgs.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown field; the fields are {', '.join(AppArgs.model_fields)}"
            elif error["type"] not in ("missing", "value_error"):
                message += f" (got {error['input']!r})"
            problems.append(f"applications[].args.{field}: {message}")
        summary = "\n  ".join(problems)
        raise InvalidArgsError(f"invalid serve_app args in the Serve config:\n  {summary}") from None
