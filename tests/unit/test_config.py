"""App args: validation messages name the YAML path of the bad field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.config import AppArgs, InvalidArgsError, parse_args


def test_relative_repository_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path)
    args = parse_args({"model_repository": "repo"})
    assert args.model_repository == tmp_path / "repo"
    assert args.runtime == "auto"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model_repository": "/no/such/dir"}, "applications[].args.model_repository: '/no/such/dir' is not"),
        ({"model_repository": ".", "runtime": "bogus"}, "applications[].args.runtime: Input should be"),
        ({"model_repository": ".", "repo": 1}, "applications[].args.repo: unknown field; the fields are"),
        ({}, "applications[].args.model_repository: Field required"),
        ({"model_repository": ".", "triton": {"exit_timeout_s": 0}}, "args.triton.exit_timeout_s: Input"),
    ],
)
def test_bad_args_name_the_field(raw: dict, expected: str) -> None:
    with pytest.raises(InvalidArgsError) as error:
        parse_args(raw)
    assert expected in str(error.value)
    assert "Traceback" not in str(error.value)


def test_every_field_is_documented() -> None:
    assert all(field.description for field in AppArgs.model_fields.values())


def test_preflight_check_reports_each_problem(example_repository: Path) -> None:
    from serve_app.preflight import check_config

    config = {
        "applications": [
            {
                "import_path": "serve_app.app:build_app",
                "args": {"model_repository": str(example_repository), "device": "cpu", "runtime": "x"},
                "deployments": [
                    {
                        "name": "InferenceServer",
                        "autoscaling_config": {"min_replicas": 3, "max_replicas": 2},
                        "ray_actor_options": {"num_gpus": 1},
                    }
                ],
            }
        ]
    }
    problems = check_config(config)
    assert any(p.startswith("applications[].args.runtime:") for p in problems)
    assert any("autoscaling_config" in p and "min_replicas" in p for p in problems)
    assert any("ray_actor_options.num_gpus is 1" in p for p in problems)
    config["applications"][0]["args"] = {"model_repository": str(example_repository)}
    config["applications"][0]["deployments"][0]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2}
    assert check_config(config) == []


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_on_demand_config_is_the_shipped_one_but_for_placement() -> None:
    """configs/app.on_demand.yaml differs from configs/app.yaml in placement and routing only."""
    shipped = yaml.safe_load((CONFIGS / "app.yaml").read_text())
    on_demand = yaml.safe_load((CONFIGS / "app.on_demand.yaml").read_text())
    balance = on_demand["controller_options"]["runtime_env"]["env_vars"].pop(
        "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"
    )
    assert balance.splitlines()[0] == "hash path,field(4,/)" and "hash-type consistent" in balance
    args = on_demand["applications"][0]["args"]
    placement = parse_args({**args, "model_repository": str(CONFIGS)}).model_placement
    assert placement.mode == "on_demand" and placement.max_models_per_replica
    del args["model_placement"]
    assert on_demand == shipped
