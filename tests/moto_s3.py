"""moto's standalone S3 server on loopback, for tests that need an S3 endpoint (in process or in subprocesses).

Auth is enforced after the 4 set-up calls (IAM user, key, policy, bucket): the credentials are a real IAM user's
key made on the server, so a wrong key is refused as it would be by AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3(log: Path, bucket: str) -> Iterator[dict[str, str]]:
    """Start the server, make ``bucket`` and an IAM user; yield the ``AWS_*`` environment that reaches it as that user.

    The environment also names no config or credentials file, so nothing comes from the user's ~/.aws.
    """
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-500:]}") from None
                time.sleep(0.2)
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        setup.update(aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="linreg")
        key = iam.create_access_key(UserName="linreg")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="linreg", PolicyName="all", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,  # nothing from the user's ~/.aws
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
