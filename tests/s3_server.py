"""An S3 server on 127.0.0.1 for tests (moto's S3 in a thread), counting the requests it gets.

While a test holds `s3_env`, authentication is on: only the access key made by
`start_s3_server` (an IAM user allowed s3:*) is accepted, so a wrong secret or an unknown key is
refused as a real store refuses it."""

from __future__ import annotations

import json
import tarfile
import threading
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import make_server


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    server: object = None
    previous_auth: float = float("inf")

    def env(self) -> dict[str, str]:
        """The environment a client of this store reads its endpoint and credentials from."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def downloads(self) -> list[str]:
        """Paths of the object reads (GET of a key, not of a bucket listing)."""
        return [p for m, p in self.requests if m == "GET" and p.strip("/").count("/") >= 1]

    def require_auth(self, on: bool) -> None:
        """Whether every request must be signed by a known key (moto's global switch, as its
        /moto-api/reset-auth sets it); off again when the test is done, for other moto users."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        if on:
            self.previous_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
            settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
            ActionAuthenticatorMixin.request_count = 0
        else:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = self.previous_auth

    def stop(self) -> None:
        self.server.shutdown()


def start_s3_server() -> S3Server:
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    state = S3Server("", "", "")

    def counting(environ, start_response):
        if not environ.get("PATH_INFO", "").startswith("/moto-api"):
            state.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counting, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.server = server
    state.endpoint = f"http://127.0.0.1:{server.server_port}"
    import boto3

    setup = dict(
        endpoint_url=state.endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="tester")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="tester", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="tester")["AccessKey"]
    state.access_key, state.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    return state


def s3_client(server: S3Server):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


# ---------------------------------------------------------------- fixtures (import them by name)


@pytest.fixture(scope="session")
def s3():
    """One server per test session: moto's stores and its authentication switch are global."""
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3.require_auth(True)
    yield s3
    s3.require_auth(False)


@pytest.fixture(scope="session")
def tao_bucket(s3, synth_data, tmp_path_factory):
    """s3://data/{train,val}/ as TAO's page names the files of a split."""
    client = s3_client(s3)
    client.create_bucket(Bucket="data")
    work = tmp_path_factory.mktemp("upload")
    for split in ("train", "val"):
        paths = synth_data[split]
        for name, folder, top in (
            ("images.tar.gz", paths["images"], "images"),
            ("images_panoptic.tar.gz", paths["panoptic"], "images_panoptic"),
        ):
            with tarfile.open(work / name, "w:gz") as tar:
                tar.add(folder, arcname=top)
            client.upload_file(str(work / name), "data", f"{split}/{name}")
        client.upload_file(str(paths["panoptic_json"]), "data", f"{split}/annotations.json")
        client.upload_file(str(synth_data["label_map"]), "data", f"{split}/label_map.json")
    return client


def tao_data_sources(val: str = "s3://data/val") -> list[str]:
    """The data sources of TAO's OneFormer override set, as s3:// URLs into the test bucket."""
    train = "s3://data/train"
    return [
        f"dataset.train.images={train}/images.tar.gz",
        f"dataset.train.annotations={train}/annotations.json",
        f"dataset.label_map={train}/label_map.json",
        f"dataset.train.panoptic={train}/images_panoptic.tar.gz",
        f"dataset.val.images={val}/images.tar.gz",
        f"dataset.val.annotations={val}/annotations.json",
        f"dataset.val.panoptic={val}/images_panoptic.tar.gz",
        f"dataset.test.images={val}/images.tar.gz",
    ]
