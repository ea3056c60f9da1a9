"""Pre-flight check of a Serve config file: `python -m serve_app.preflight configs/app.yaml`.

`serve run <config>` only submits the config: a bad field fails later in the Serve
controller (the app goes DEPLOY_FAILED, `serve run` keeps running). This reports the
same problems at once, one line each naming the field and the fix, and exits 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from serve_app.config import InvalidArgsError, parse_args
from serve_app.storage import RepositoryURL, StorageError, probe


def check_config(config: dict[str, Any]) -> list[str]:
    """What `serve run` would only report later (or never): one line per problem, naming the
    field and the fix. Checks each serve_app application's args and its deployments' options."""
    from ray.serve.config import AutoscalingConfig

    problems = []
    for i, app in enumerate(config.get("applications") or []):
        if not str(app.get("import_path", "")).startswith("serve_app."):
            continue
        try:
            args = parse_args(app.get("args") or {})
        except InvalidArgsError as exc:
            problems += [line.strip() for line in str(exc).splitlines()[1:]]
        else:
            if isinstance(args.model_repository, RepositoryURL):
                problems += _store_problems(args.model_repository, app)
        for j, deployment in enumerate(app.get("deployments") or []):
            where = f"applications[{i}].deployments[{j}]"
            autoscaling = deployment.get("autoscaling_config")
            if autoscaling is not None:
                try:
                    AutoscalingConfig.model_validate(autoscaling)
                except ValidationError as exc:
                    for error in exc.errors():
                        field = "".join(f".{part}" for part in error["loc"])
                        message = error["msg"].removeprefix("Value error, ")
                        problems.append(f"{where}.autoscaling_config{field}: {message}")
            gpus = (deployment.get("ray_actor_options") or {}).get("num_gpus", 0)
            if gpus and (app.get("args") or {}).get("device") == "cpu":
                problems.append(
                    f"{where}.ray_actor_options.num_gpus is {gpus} but applications[{i}].args.device "
                    "is 'cpu': set device: auto (or cuda) to use the GPU, or remove num_gpus"
                )
    return problems


def _store_problems(location: RepositoryURL, app: dict[str, Any]) -> list[str]:
    """Read the repository's listing as a replica would, with the app's runtime_env.env_vars."""
    env_vars = (app.get("runtime_env") or {}).get("env_vars") or {}
    with _environment(env_vars):
        try:
            probe(location)
        except StorageError as exc:
            return [str(exc)]
    return []


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update({name: str(value) for name, value in variables.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> None:
    """`python -m serve_app.preflight configs/app.yaml && serve run configs/app.yaml`."""
    import sys

    import yaml

    path = sys.argv[1] if len(sys.argv) > 1 else "configs/app.yaml"
    with open(path) as f:
        problems = check_config(yaml.safe_load(f))
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
