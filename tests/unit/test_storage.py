"""Repositories on object storage: URL forms, the torch runtime's mirror, both runtimes on a real
S3-compatible server (moto, tests/object_store.py) with authentication on."""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.config import AppArgs, InvalidArgsError, parse_args
from serve_app.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError
from serve_app.placement import Placement
from serve_app.preflight import check_config
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.factory import start_runtime
from serve_app.storage import RepositoryMirror, RepositoryURL, StorageError, parse_url, probe
from tests.conftest import BROKEN_ENTRIES
from tests.object_store import S3Server

BUCKET = "models"
CPU_PLACEMENT = Placement(gpu_ids=(), cuda_visible_devices=None, num_cpus=1.0, replica="test", node_id="")


@pytest.mark.parametrize(
    ("url", "container", "prefix", "endpoint", "account"),
    [
        ("s3://bucket/path/to/repo", "bucket", "path/to/repo", None, None),
        ("s3://bucket", "bucket", "", None, None),
        ("s3://bucket//a//b/", "bucket", "a/b", None, None),
        ("s3://127.0.0.1:9000/bucket/repo", "bucket", "repo", "http://127.0.0.1:9000", None),
        ("s3://http://minio.local:9000/bucket/repo", "bucket", "repo", "http://minio.local:9000", None),
        ("s3://https://s3.example.com:443/my.bucket/r", "my.bucket", "r", "https://s3.example.com:443", None),
        ("gs://bucket/repo", "bucket", "repo", None, None),
        ("as://account/container/repo", "container", "repo", None, "account"),
    ],
)
def test_triton_url_forms(
    url: str, container: str, prefix: str, endpoint: str | None, account: str | None
) -> None:
    location = parse_url(url)
    assert (location.container, location.prefix, location.endpoint, location.account) == (
        container, prefix, endpoint, account,
    )  # fmt: skip
    assert str(location) == url  # handed to Triton as the user wrote it


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/repo", "unsupported scheme 'ftp://'; a local directory or one of s3://bucket/path"),
        ("s3://", "no bucket"),
        ("s3://Upper_Case/repo", "'Upper_Case' is not a bucket name"),
        ("as://account", "no container; the form is as://account/container/path"),
        ("as:///container/x", "no storage account"),
    ],
)
def test_bad_urls_name_the_field(url: str, message: str) -> None:
    with pytest.raises(InvalidArgsError) as error:
        parse_args({"model_repository": url})
    assert f"applications[].args.model_repository: '{url}': {message}" in str(error.value)


def test_args_keep_the_url(s3_server: S3Server) -> None:
    args = parse_args({"model_repository": s3_server.url(BUCKET, "repo")})
    assert isinstance(args.model_repository, RepositoryURL)
    assert AppArgs.model_validate(args.model_dump()).model_repository == args.model_repository


@pytest.fixture(scope="module")
def bucket_repository(
    s3_server: S3Server, example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The examples, an empty directory (as an ensemble's version directory is) and a broken entry."""
    source = tmp_path_factory.mktemp("bucket") / "repo"
    shutil.copytree(example_repository, source)
    (source / "linear" / "0").mkdir()  # ignored as a version (Triton: begins with 0)
    (source / "broken" / "1").mkdir(parents=True)
    (source / "broken" / "config.pbtxt").write_text(BROKEN_ENTRIES["bad_pbtxt"][0])
    return s3_server.upload(source, BUCKET, "unit")


@pytest.fixture
def credentials(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.credentials().items():
        monkeypatch.setenv(name, value)


def assert_same_tree(left: Path, right: Path) -> None:
    comparison = filecmp.dircmp(left, right)
    assert not (comparison.left_only or comparison.right_only or comparison.diff_files), comparison.report()
    for sub in comparison.common_dirs:
        assert_same_tree(left / sub, right / sub)


@pytest.fixture
async def mirror(bucket_repository: str, credentials: None) -> AsyncIterator[RepositoryMirror]:
    mirror = RepositoryMirror(parse_url(bucket_repository))
    await mirror.fetch()
    yield mirror
    mirror.close()


@pytest.mark.anyio
async def test_mirror_copies_the_repository(mirror: RepositoryMirror, example_repository: Path) -> None:
    assert (mirror.root / "linear" / "0").is_dir()  # from the empty directory's marker
    (mirror.root / "linear" / "0").rmdir()
    shutil.rmtree(mirror.root / "broken")
    assert_same_tree(mirror.root, example_repository)
    directory = mirror.root.parent
    mirror.close()
    assert not directory.exists()


@pytest.mark.anyio
async def test_mirror_fetch_follows_the_bucket(
    mirror: RepositoryMirror, s3_server: S3Server, example_repository: Path
) -> None:
    """A model added, changed or removed in the bucket is so locally after `fetch(model)`."""
    url = s3_server.upload(example_repository / "linear", BUCKET, "unit/added")
    try:
        assert not (mirror.root / "added").exists()
        await mirror.fetch("added")
        assert_same_tree(mirror.root / "added", example_repository / "linear")
        s3_server.client().put_object(Bucket=BUCKET, Key="unit/added/config.pbtxt", Body=b"changed")
        await mirror.fetch("added")
        assert (mirror.root / "added" / "config.pbtxt").read_bytes() == b"changed"
    finally:
        s3_server.delete(BUCKET, "unit/added")
    await mirror.fetch("added")
    assert not (mirror.root / "added").exists(), url
    assert sorted(p.name for p in mirror.root.parent.iterdir()) == ["repository"]  # no staging left


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("where", "secret", "message"),
    [
        ("bucket", "wrong-secret", "cannot read"),
        ("empty", None, "holds no model directory"),
        ("missing", None, "does not exist"),
    ],
    ids=["wrong-credentials", "empty-prefix", "missing-bucket"],
)
async def test_unreadable_store_names_field_and_fix(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, bucket_repository: str,
    where: str, secret: str | None, message: str,
) -> None:  # fmt: skip
    for name, value in s3_server.credentials(secret).items():
        monkeypatch.setenv(name, value)
    url = {
        "bucket": bucket_repository,
        "empty": s3_server.url(BUCKET, "nothing-here"),
        "missing": s3_server.url("no-such-bucket", "repo"),
    }[where]
    with pytest.raises(StorageError) as error:
        await RepositoryMirror(parse_url(url)).fetch()
    text = str(error.value)
    assert text.startswith("applications[].args.model_repository: ") and message in text, text
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in text and "runtime_env.env_vars" in text
    assert "wrong-secret" not in text and s3_server.secret not in text


def test_probe_and_check(bucket_repository: str, credentials: None, s3_server: S3Server) -> None:
    names = ["broken", "image_classifier", "int_ops", "linear", "multi_io"]
    assert probe(parse_url(bucket_repository)) == names
    app = {"import_path": "serve_app.app:build_app", "args": {"model_repository": bucket_repository}}
    assert check_config({"applications": [app]}) == []
    app["args"]["model_repository"] = s3_server.url("no-such-bucket", "repo")
    (problem,) = check_config({"applications": [app]})
    assert problem.startswith("applications[].args.model_repository: ") and "does not exist" in problem


# --- both runtimes on the bucket ---------------------------------------------------------


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton)])
async def bucket_runtime(
    request: pytest.FixtureRequest, bucket_repository: str, credentials: None
) -> AsyncIterator[Runtime]:
    if request.param == "triton":
        pytest.importorskip("tritonserver", reason="needs `python -m serve_app.triton_install install`")
    args = parse_args({"model_repository": bucket_repository, "runtime": request.param, "torch_threads": 1})
    runtime = await start_runtime(args, CPU_PLACEMENT)
    assert runtime.name == request.param
    yield runtime
    await runtime.stop()


def linear_reference(example_repository: Path, rows: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(example_repository / "linear" / "1" / "model.pt"))
    with torch.no_grad():
        return module(torch.from_numpy(rows)).numpy()


@pytest.mark.anyio
async def test_runtime_serves_the_bucket(
    bucket_runtime: Runtime, s3_server: S3Server, example_repository: Path
) -> None:
    rows = {row.name: row for row in bucket_runtime.index()}
    assert {name: row.state for name, row in rows.items()} == {
        "broken": "UNAVAILABLE", "image_classifier": "READY", "int_ops": "READY", "linear": "READY",
        "multi_io": "READY",
    }  # fmt: skip
    assert rows["broken"].reason, "a broken entry says why"
    rows = np.arange(32, dtype=np.float32).reshape(2, 16)
    version = bucket_runtime.resolve("linear", None)
    outputs = await bucket_runtime.infer("linear", version, {"input__0": rows}, ["output__0"])
    expected = linear_reference(example_repository, rows)
    np.testing.assert_allclose(outputs["output__0"], expected, rtol=1e-5)

    # A model added to the bucket after the start loads with model control, at its newest version.
    source = example_repository / "linear" / "1"
    s3_server.upload(source, BUCKET, "unit/later/1")
    s3_server.upload(source, BUCKET, "unit/later/3")
    config = (example_repository / "linear" / "config.pbtxt").read_bytes().replace(b'"linear"', b'"later"')
    s3_server.client().put_object(Bucket=BUCKET, Key="unit/later/config.pbtxt", Body=config)
    try:
        with pytest.raises(ModelNotFoundError):
            bucket_runtime.resolve("later", None)
        await bucket_runtime.load("later", {})
        assert bucket_runtime.resolve("later", None) == "3"
        outputs = await bucket_runtime.infer("later", "3", {"input__0": rows}, ["output__0"])
        np.testing.assert_allclose(outputs["output__0"], expected, rtol=1e-5)
        await bucket_runtime.unload("later")
        with pytest.raises(ModelNotReadyError):
            bucket_runtime.resolve("later", None)
    finally:
        s3_server.delete(BUCKET, "unit/later")
    with pytest.raises(
        InvalidInputError, match=r"^failed to load 'gone', failed to poll from model repository"
    ):
        await bucket_runtime.load("gone", {})
