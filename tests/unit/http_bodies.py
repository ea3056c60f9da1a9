"""Inference request bodies through the HTTP decoder, for the codec, tensor-rule and dataplane tests."""

from __future__ import annotations

import orjson

from serve_app.http_codec import decode_request
from serve_app.infer_types import InferRequest, Limits

LIMITS = Limits(max_bytes=2**20)


def decode(
    body: dict | bytes, header_length: int | str | None = None, limits: Limits = LIMITS
) -> InferRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    header = None if header_length is None else str(header_length)
    return decode_request("m", None, raw, header, limits=limits)


def json_input(name: str, datatype: str, shape: list[int], data: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}
