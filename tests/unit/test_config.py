"""App args: validation messages name the YAML path of the bad field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

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
