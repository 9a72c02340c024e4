"""moto's standalone S3 server for the tests that put the store on S3 (test_s3, test_dask_s3).

One server per test module, on a free loopback port, with IAM checks on: the credentials are a real IAM user's
key made on it, so a wrong key is refused as it would be by AWS, and the secret is a string no artifact may
contain. `s3_server` starts it and yields the environment a client (or another process) needs; `use_env`
puts that environment into this process for the duration of a module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.local_server import start_moto


@contextmanager
def s3_server(log_dir: Path, bucket: str) -> Iterator[dict[str, str]]:
    """moto's server with auth enforced after the 4 set-up calls (IAM user, key, policy, bucket); its env."""
    import boto3

    server, endpoint = start_moto(log_dir / "server.log", INITIAL_NO_AUTH_ACTION_COUNT="4")
    try:
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


@contextmanager
def use_env(env: dict[str, str]) -> Iterator[None]:
    """``env`` in this process's environment (and no AWS profile or session token), restored afterwards."""
    import s3fs

    saved = {name: os.environ.get(name) for name in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    try:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(env)
        s3fs.S3FileSystem.clear_instance_cache()
        yield
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
