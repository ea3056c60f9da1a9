"""Large bodies are decoded (and inflated, and large responses encoded) off the event loop, so
health checks and small requests keep being answered meanwhile; tiny requests stay inline.

No timings: a decode is held on its thread by an event, and liveness must answer while it is
held. Were the decode on the event loop, nothing could answer until it was let go.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from serve_app import http_api

CODEC_THREAD = "serve_app-codec"
FAILSAFE_S = 30  # only bounds how long a failing test waits for the held decode


def linear_body(rows: int) -> bytes:
    data = np.linspace(0, 1, rows * 16, dtype=np.float32).tolist()
    tensor = {"name": "input__0", "datatype": "FP32", "shape": [rows, 16], "data": data}
    return orjson.dumps({"inputs": [tensor]})


LARGE = linear_body(64) + b" " * http_api.OFFLOAD_BYTES  # a JSON part past the threshold (whitespace pads it)


class Spy:
    """Wraps a codec function in `serve_app.http_api`: records the threads it runs on, and can hold
    its first call until released (`started`/`finished` are that call's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, hold_first: bool = False) -> None:
        self.threads: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        original: Callable[..., Any] = getattr(http_api, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            first = not self.threads
            self.threads.append(threading.current_thread().name)
            if not first:
                return original(*args, **kwargs)
            self.started.set()
            if hold_first:
                self.release.wait(FAILSAFE_S)
            try:
                return original(*args, **kwargs)
            finally:
                self.finished.set()

        monkeypatch.setattr(http_api, name, spy)


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as pool:
        yield pool


def test_live_answers_while_a_large_body_is_being_decoded(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, background: ThreadPoolExecutor
) -> None:
    decode = Spy(monkeypatch, "decode_request", hold_first=True)
    large = background.submit(client.post, "/v2/models/linear/infer", content=LARGE)
    assert decode.started.wait(FAILSAFE_S)
    try:
        live = client.get("/v2/health/live")
        small = client.post("/v2/models/linear/infer", content=linear_body(1))
        assert not decode.finished.is_set()  # both answered while the large decode was held
    finally:
        decode.release.set()
    assert live.status_code == 200 and live.json() == {"live": True}
    assert small.status_code == 200, small.text
    assert large.result(FAILSAFE_S).status_code == 200
    assert decode.threads[0].startswith(CODEC_THREAD)


def test_tiny_requests_are_decoded_and_encoded_inline(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode, encode = Spy(monkeypatch, "decode_request"), Spy(monkeypatch, "encode_response")
    assert client.post("/v2/models/linear/infer", content=linear_body(2)).status_code == 200
    # A binary tensor behind a small JSON header is only wrapped, never parsed: inline at any size.
    image = np.ones((1, 3, 224, 224), np.float32)
    assert image.nbytes > http_api.OFFLOAD_BYTES
    tensor = {"name": "input__0", "datatype": "FP32", "shape": list(image.shape)}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": image.nbytes}}]})
    response = client.post(
        "/v2/models/image_classifier/infer",
        content=header + image.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert decode.threads and encode.threads
    assert not any(t.startswith(CODEC_THREAD) for t in decode.threads + encode.threads)


def test_compressed_bodies_are_inflated_off_the_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even a small one: what it inflates to is unknown until it is inflated.
    inflate = Spy(monkeypatch, "decompress")
    body = gzip.compress(linear_body(2))
    response = client.post("/v2/models/linear/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    [thread] = inflate.threads
    assert thread.startswith(CODEC_THREAD)


@pytest.mark.parametrize(("binary", "offloaded"), [(False, True), (True, False)])
def test_large_json_responses_are_encoded_off_the_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, binary: bool, offloaded: bool
) -> None:
    monkeypatch.setattr(http_api, "OFFLOAD_BYTES", 512)  # linear's 64x4 FP32 output is 1 KiB
    encode = Spy(monkeypatch, "encode_response")
    request = orjson.loads(linear_body(64))
    request["parameters"] = {"binary_data_output": binary}
    assert client.post("/v2/models/linear/infer", json=request).status_code == 200
    [thread] = encode.threads
    assert thread.startswith(CODEC_THREAD) == offloaded
