"""Pre-flight check of a Serve config file: `python -m serve_app.check configs/app.yaml`.

`serve run <config>` only submits the config: a bad field fails later in the Serve
controller (the app goes DEPLOY_FAILED, `serve run` keeps running). This reports the
same problems at once, one line each naming the field and the fix, and exits 1.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from serve_app.config import InvalidArgsError, parse_args


def check_config(config: dict[str, Any]) -> list[str]:
    """What `serve run` would only report later (or never): one line per problem, naming the
    field and the fix. Checks each serve_app application's args and its deployments' options."""
    from ray.serve.config import AutoscalingConfig

    problems = []
    for i, app in enumerate(config.get("applications") or []):
        if not str(app.get("import_path", "")).startswith("serve_app."):
            continue
        try:
            parse_args(app.get("args") or {})
        except InvalidArgsError as exc:
            problems += [line.strip() for line in str(exc).splitlines()[1:]]
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


def main() -> None:
    """`python -m serve_app.check configs/app.yaml && serve run configs/app.yaml`."""
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
