"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1, in its own process.

Its own process, not moto's ThreadedMotoServer: Triton's S3 client blocks in C++ holding the
GIL while it connects, so a server thread in the same Python process never answers it.
Authentication is on (moto's INITIAL_NO_AUTH_ACTION_COUNT): the first three requests create an
IAM user with an S3 policy and its access key; every later request must be signed with that
key, so wrong credentials are refused as AWS refuses them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.processes import accepts, free_port, start_process, stop_process

REGION = "us-east-1"
SETUP_REQUESTS = 3  # create_user, put_user_policy, create_access_key


@dataclass
class S3Server:
    """moto_server with one IAM key; `credentials()` is the environment a reader needs."""

    port: int = field(default_factory=free_port)
    key_id: str = ""
    secret: str = ""
    process: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, prefix: str) -> str:
        """The repository URL in Triton's form for an S3-compatible server."""
        return f"s3://{self.endpoint}/{bucket}/{prefix}"

    def start(self) -> S3Server:
        import boto3

        log = Path(tempfile.mkdtemp(prefix="moto-")) / "moto.log"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**_environ(), "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
        self.process = start_process(command, log, lambda: accepts(self.port), "moto_server", env=env)
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="serve-app")
        allow_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [allow_s3]}
        iam.put_user_policy(UserName="serve-app", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="serve-app")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def credentials(self, secret: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret if secret is None else secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)  # fmt: skip

    def upload(self, directory: Path, bucket: str, prefix: str) -> str:
        """Copy a local repository into `bucket/prefix` (bucket created if needed); returns its URL.

        Empty directories (an ensemble's version directory) get a directory marker, as the AWS
        console and `aws s3` tools make them.
        """
        client = self.client()
        if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket=bucket)
        for path in sorted(directory.rglob("*")):
            key = f"{prefix}/{path.relative_to(directory).as_posix()}"
            if path.is_file():
                client.upload_file(str(path), bucket, key)
            elif not any(path.iterdir()):
                client.put_object(Bucket=bucket, Key=key + "/", Body=b"")
        return self.url(bucket, prefix)

    def delete(self, bucket: str, prefix: str) -> None:
        client = self.client()
        for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


def _environ() -> dict[str, str]:
    """This environment without AWS settings (the server must not pick up a user's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
