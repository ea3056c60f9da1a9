"""A model repository on object storage: `serve run` of the examples from a real S3-compatible
server (moto, authentication on), both runtimes, credentials through the Serve config's
`runtime_env.env_vars` as a user sets them.

The Triton API checks of test_http_api run here again, unchanged, against the bucket: they are
imported below, so pytest collects them in this module, where `served` is the S3 one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools.processes import wait_for
from tests.conftest import reference
from tests.e2e.checks import assert_error, assert_matches, linear_body, replicas_answering
from tests.e2e.load import ClosedLoop
from tests.e2e.serve_run import ServeRun, app_config, fixed_replicas
from tests.e2e.test_http_api import (  # noqa: F401 - collected here, against the bucket
    test_async_infer,
    test_health,
    test_infer,
    test_inference_statistics,
    test_linear_batches,
    test_model_config,
    test_model_metadata,
    test_model_ready,
    test_repository_index,
    test_server_metadata,
)
from tests.object_store import S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BUCKET = "e2e"
FIELD = "applications[].args.model_repository"


def s3_app(s3_server: S3Server, url: str, runtime: str, secret: str | None = None, **args: object) -> dict:
    config = app_config(
        {"model_repository": url, "runtime": runtime, "model_control": True, **args}, fixed_replicas(2)
    )
    config["applications"][0]["runtime_env"] = {"env_vars": s3_server.credentials(secret)}
    return config


@pytest.fixture(scope="module")
def bucket_url(s3_server: S3Server, example_repository: Path) -> str:
    return s3_server.upload(example_repository, BUCKET, "repo")


@pytest.fixture(scope="module")
def served(
    runtime: str,
    ray_address: str,
    s3_server: S3Server,
    bucket_url: str,
    example_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeRun]:
    """The app serving the examples from the bucket on 2 replicas, polling it (the local copy is
    the outputs' reference)."""
    config = s3_app(s3_server, bucket_url, runtime, repository_poll_s=1)
    with ServeRun(
        config, tmp_path_factory.mktemp("serve-s3"), ray_address, local_copy=example_repository
    ) as run:
        print(f"\n{runtime} runtime from {bucket_url}: ready after {run.ready_after_s:.1f} s")
        yield run


def test_model_added_to_the_bucket_loads(
    served: ServeRun, http: httpx.Client, s3_server: S3Server, example_repository: Path
) -> None:
    """Put a model into the bucket, load it with model control, serve it; a newer version follows."""
    prefix = f"repo/added_{served.config['applications'][0]['args']['runtime']}"
    name = prefix.removeprefix("repo/")
    linear = example_repository / "linear"
    config = (linear / "config.pbtxt").read_text().replace('"linear"', f'"{name}"')
    body, data = linear_body()
    (expected,) = reference(example_repository, "linear", data)
    try:
        assert_error(http.post(f"/v2/models/{name}/infer", json=body), 404)
        s3_server.upload(linear / "1", BUCKET, f"{prefix}/1")
        s3_server.client().put_object(Bucket=BUCKET, Key=f"{prefix}/config.pbtxt", Body=config.encode())
        assert http.post(f"/v2/repository/models/{name}/load").status_code == 200
        response = http.post(f"/v2/models/{name}/infer", json=body)
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert_matches(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), expected)

        # Triton reloads a model only if its objects' Last-Modified changed, and S3 gives that to the
        # second: a new version uploaded in the same second as the config would go unnoticed.
        time.sleep(1.0)
        s3_server.upload(linear / "1", BUCKET, f"{prefix}/2")  # version policy: latest 1
        assert http.post(f"/v2/repository/models/{name}/load").status_code == 200
        assert http.get(f"/v2/models/{name}").json()["versions"] == ["2"]
        assert http.post(f"/v2/repository/models/{name}/unload").status_code == 200
    finally:
        s3_server.delete(BUCKET, prefix)
    assert_error(http.post("/v2/repository/models/not_in_bucket/load"), 400)


def test_a_new_version_in_the_bucket_rolls_out_under_load_without_a_failed_request(
    served: ServeRun, s3_server: S3Server, example_repository: Path
) -> None:
    """Repository polling (`repository_poll_s`) on object storage: a version uploaded to the bucket
    serves on every replica, and no request fails while it replaces the old one."""
    body, _ = linear_body()

    def send(http: httpx.Client, _: int) -> str:
        response = http.post("/v2/models/linear/infer", json=body)
        return "" if response.status_code == 200 else f"{response.status_code} {response.text}"

    replicas = replicas_answering(served.url, 2)
    # Triton reloads a model only if its objects' Last-Modified changed, which S3 gives to the second.
    time.sleep(1.0)
    try:
        with ClosedLoop(served.url, send, clients=8) as load:
            wait_for(lambda: load.counts()[0] > 50, 60, "load running")
            s3_server.upload(example_repository / "linear" / "1", BUCKET, "repo/linear/2")
            started = time.monotonic()
            wait_for(lambda: versions_seen(served.url, 16) == {("2",)}, 90, "version 2 on every replica")
            rolled_after = time.monotonic() - started
            ok_at_roll = load.counts()[0]
            wait_for(lambda: load.counts()[0] > ok_at_roll + 50, 60, "load after the roll")
    finally:  # the bucket as the next runtime's app expects it
        s3_server.delete(BUCKET, "repo/linear/2")
    ok, failed = load.counts()
    print(
        f"\nversion 2 on {len(replicas)} replicas {rolled_after:.1f} s after its upload: "
        f"{ok} requests, {failed} failed"
    )
    assert failed == 0, load.failures[:10]


def versions_seen(url: str, reads: int) -> set[tuple[str, ...]]:
    """The versions of linear that `reads` concurrent metadata reads found (HAProxy spreads them)."""
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda _: httpx.get(f"{url}/v2/models/linear", timeout=30).json(), range(reads))
        return {tuple(answer["versions"]) for answer in answers}


def test_credentials_are_never_shown(served: ServeRun, http: httpx.Client, s3_server: S3Server) -> None:
    answers = [
        http.get(path).text
        for path in ("/v2", "/v2/models/linear", "/v2/models/linear/config", "/v2/models/stats")
    ]
    answers.append(http.post("/v2/repository/index").text)
    answers.append(http.post("/v2/repository/models/not_in_bucket/load").text)
    for text in [*answers, served.full_log()]:
        assert s3_server.secret not in text


def test_wrong_credentials_fail_the_deploy(
    ray_address: str, s3_server: S3Server, bucket_url: str, tmp_path: Path
) -> None:
    """The replica cannot start: its error names the field and the fix, never the secret, and
    `auto` does not fall back to the torch runtime (it could not read the store either; the torch
    runtime's own message is tested in tests/unit/test_storage.py). Serve retries a failing
    replica for minutes before the app is DEPLOY_FAILED: the first error is what a user reads."""
    config = s3_app(s3_server, bucket_url, "auto", secret="not-the-secret")
    run = ServeRun(config, tmp_path, address=ray_address, env={"RAY_DEDUP_LOGS": "0"}).launch()
    try:
        started = time.monotonic()
        run.wait_log(rf"StorageError: {re.escape(FIELD)}: cannot read", timeout_s=180)
        failed_after = time.monotonic() - started
    finally:
        run.stop()
    log = run.full_log()
    print(f"\nwrong credentials: the replica's start failed after {failed_after:.1f} s")
    assert f"{FIELD}: cannot read '{bucket_url}'" in log
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in log and "runtime_env.env_vars" in log
    assert "not-the-secret" not in log and s3_server.secret not in log
    assert "using the torch runtime" not in log
