"""The holder as the deployment-scoped actor Serve manages, and the replicas' handle to it.

Serve starts the actor before the deployment's replicas, health-checks it, starts a new one when
it dies, and removes it with the deployment. What must outlive an actor goes to Ray's GCS
key-value store under the application, the deployment and a digest of the app's args: a
redeploy with the same args keeps the model state, one with other args starts from the
repository, and so does a new Ray cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.experimental import internal_kv
from ray.serve.config import DeploymentActorConfig

from serve_app.config import parse_args
from serve_app.errors import ModelNotReadyError
from serve_app.model_state.fingerprint import fingerprinter
from serve_app.model_state.holder import ModelStateHolder, ReplicaRecord

logger = logging.getLogger(__name__)

ACTOR_NAME = "model_state"
KV_NAMESPACE = "serve_app"
# How long a replica keeps trying a holder that Serve is starting again, and how often.
RESOLVE_TIMEOUT_S = 60.0
RETRY_S = 0.2


class GcsStore:
    """The holder's document in Ray's GCS key-value store."""

    def __init__(self, key: str) -> None:
        self._key = key

    def get(self) -> dict[str, Any] | None:
        raw = internal_kv._internal_kv_get(self._key, namespace=KV_NAMESPACE)
        return json.loads(raw) if raw else None

    def put(self, document: dict[str, Any]) -> None:
        internal_kv._internal_kv_put(self._key, json.dumps(document), overwrite=True, namespace=KV_NAMESPACE)


async def _alive(record: ReplicaRecord) -> bool:
    """A Serve replica is a named actor: its name resolves while it lives."""
    try:
        await asyncio.to_thread(ray.get_actor, record.name, record.namespace)
    except ValueError:
        return False
    return True


@ray.remote(num_cpus=0)
class ModelStateActor(ModelStateHolder):
    def __init__(self, raw_args: dict[str, Any]) -> None:
        args = parse_args(raw_args)
        context = serve.get_deployment_actor_context()
        digest = hashlib.sha256(json.dumps(raw_args, sort_keys=True, default=str).encode()).hexdigest()[:16]
        key = f"model_state/{context.app_name}/{context.deployment}/{digest}"
        poll_s = args.repository_poll_s
        super().__init__(
            GcsStore(key), _alive, fingerprinter(args.model_repository) if poll_s else None, poll_s
        )


def actor_config(raw_args: dict[str, Any]) -> DeploymentActorConfig:
    """The deployment's `deployment_actors` entry for the holder (Serve passes the app's args on as
    plain data, so the actor gets them as the Serve config gave them)."""
    return DeploymentActorConfig(
        name=ACTOR_NAME, actor_class=ModelStateActor, init_kwargs={"raw_args": raw_args}
    )


class ActorHolder:
    """The holder's methods for a replica. A call that meets a dead holder is made again on the
    one Serve starts in its place (every holder method is safe to repeat; the state is kept)."""

    def __init__(self) -> None:
        self._handle: Any = None

    async def call(self, method: str, *args: Any) -> Any:
        failed_at: float | None = None  # the time to give up counts from the first failure
        while True:
            handle = self._handle or await asyncio.to_thread(self._lookup)
            if handle is not None:
                try:
                    return await getattr(handle, method).remote(*args)
                except RayActorError:
                    self._handle = None
            failed_at = failed_at or time.monotonic()
            if time.monotonic() - failed_at > RESOLVE_TIMEOUT_S:
                raise ModelNotReadyError(
                    f"the deployment's model state did not answer within {RESOLVE_TIMEOUT_S:g} s"
                )
            await asyncio.sleep(RETRY_S)

    def _lookup(self) -> Any:
        try:
            self._handle = serve.get_deployment_actor(ACTOR_NAME)
        except ValueError:  # its successor is not registered yet
            return None
        return self._handle
