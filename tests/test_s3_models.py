"""The pruned botocore data the S3 client loads (cachesrv/store/s3/models/): still what
the installed botocore's files prune to, never the full files parsed at run time, and a
client that sends the same requests as boto3's unpruned one. No object store needed."""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.config
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse

from cachesrv.store.s3 import client as s3client


def test_the_shipped_models_are_the_installed_botocore_pruned() -> None:
    for name, text in s3client._model_files().items():
        with open(os.path.join(s3client._MODELS, name), encoding="utf-8") as f:
            assert f.read() == text, (
                f"{name} is stale (botocore upgraded?): regenerate with python -c "
                "'from cachesrv.store.s3.client import _write_models; _write_models()'"
            )


def test_making_a_client_parses_none_of_botocores_big_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file

    def spy(self: Any, file_path: str) -> Any:
        data = load_file(self, file_path)
        if data is not None:
            loaded.append(file_path)
        return data

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", spy)
    monkeypatch.delenv("AWS_DATA_PATH", raising=False)
    s3client.make_client(10.0)
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    assert os.path.join(s3client._MODELS, "endpoints") in loaded
    assert os.path.join(s3client._MODELS, "s3", "2006-03-01", "service-2") in loaded
    assert os.path.join(builtin, "endpoints") not in loaded
    assert os.path.join(builtin, "s3", "2006-03-01", "service-2") not in loaded


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("put_object", {"Key": "k/x", "Body": b"1", "IfNoneMatch": "*"}),
    ("put_object", {"Key": "k", "Body": b"1", "IfMatch": '"e"'}),
    ("get_object", {"Key": "k", "Range": "bytes=0-9"}),
    ("head_object", {"Key": "k"}),
    ("delete_object", {"Key": "k", "IfMatch": '"e"'}),
    ("delete_objects", {"Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}], "Quiet": True}}),
    ("list_objects_v2", {"Prefix": "p/", "StartAfter": "p/a", "ContinuationToken": "t"}),
    ("head_bucket", {}),
]
VARYING = {"User-Agent", "X-Amz-Date", "Authorization", "amz-sdk-invocation-id", "amz-sdk-request"}


def requests(client: Any, bucket: str) -> list[Any]:
    """What each of ObjectStore's operations would send (caught before it is sent)."""
    sent: list[Any] = []

    def send(request: Any, **_: Any) -> AWSResponse:
        headers = {k: v for k, v in request.headers.items() if k not in VARYING}
        sent.append((request.method, request.url, headers))
        return AWSResponse(request.url, 200, {"ETag": '"e"'}, None)

    client.meta.events.register("before-send.s3", send)
    for operation, kwargs in CALLS:
        try:
            getattr(client, operation)(Bucket=bucket, **kwargs)
        except Exception as exc:  # no body to parse: what matters is what was sent
            sent.append((operation, type(exc).__name__))
    presigned = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    return [client.meta.endpoint_url, client.meta.region_name, presigned.split("?")[0], *sent]


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "cn-north-1"])
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:8333"])
@pytest.mark.parametrize("addressing", [None, "virtual", "path"])
def test_the_client_sends_what_boto3s_unpruned_client_sends(
    monkeypatch: pytest.MonkeyPatch, region: str, endpoint: str | None, addressing: str | None
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", region)
    monkeypatch.delenv("AWS_DATA_PATH", raising=False)
    if endpoint is None:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    given: dict[str, Any] = {}
    create_client = botocore.session.Session.create_client

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        given.update(kwargs)
        return create_client(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", spy)
    ours = s3client.make_client(10.0)
    config = given["config"]  # make_client's, as it gave it (meta.config is resolved)
    if addressing is not None:
        config = config.merge(botocore.config.Config(s3={"addressing_style": addressing}))
        session = botocore.session.Session()
        session.register_component("data_loader", s3client._loader(session))
        ours = session.create_client("s3", region_name=region, config=config)
    theirs = boto3.session.Session().client("s3", region_name=region, config=config)
    for bucket in ("my-bucket", "my.dotted.bucket"):
        assert requests(ours, bucket) == requests(theirs, bucket)


def test_credential_clients_resolve_as_with_botocores_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore's assume-role / web-identity / SSO providers make their clients on the
    same session, so the pruned endpoints.json keeps their services."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_STS", raising=False)
    monkeypatch.delenv("AWS_DATA_PATH", raising=False)
    for service in ("sts", "sso", "sso-oidc"):
        for region in ("eu-west-1", "us-east-1", "cn-north-1"):
            session = botocore.session.Session()
            session.register_component("data_loader", s3client._loader(session))
            ours = session.create_client(service, region_name=region)
            theirs = botocore.session.Session().create_client(service, region_name=region)
            assert ours.meta.endpoint_url == theirs.meta.endpoint_url
