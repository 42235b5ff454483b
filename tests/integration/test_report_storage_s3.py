"""Report delivery to S3: prefect-aws's S3Bucket block against moto's server (a real HTTP
endpoint on a free loopback port), the presigned link fetched over HTTP like a browser would.

The whole path through a deployment (a worker runs ``maintenance-report/acme-monthly``,
stores to S3 here, links, notifies) is in tests/integration/test_deploy_e2e.py.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from blocks.report_storage import store_files
from core.errors import ReportNotStored
from core.redact import redact
from sandbox import moto
from sandbox.estate import Estate, EstateSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("moto.server") is None, reason="moto[server] is not installed"
    ),
]

REGION = "eu-west-1"
BUCKET = "caretaker-reports-test"
HTML = "<!DOCTYPE html><title>report</title><p>99.955\u00a0% \u2014 offline</p>\n"


@contextmanager
def reports_bucket(name: str, net: int) -> Iterator[str]:
    """moto on a free loopback port (an estate ``name`` without hosts), with the bucket
    :data:`BUCKET`; its URL. Stopped after."""
    estate = Estate(EstateSpec(name=name, net=net, hosts=[], aws=[]))
    estate.dir.mkdir(parents=True, exist_ok=True)
    try:
        url = moto.start(estate)
        s3_client(url).create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        yield url
    finally:
        estate.down(purge=True)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with reports_bucket("test-report-s3", 73) as url:
        yield url


def s3_client(url: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=moto.ACCESS_KEY,
        aws_secret_access_key=moto.SECRET_KEY,
    )


def bucket_block(url: str, bucket: str = BUCKET, folder: str = "reports") -> Any:
    """An S3Bucket block (not saved) with credentials for the endpoint."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from prefect_aws.s3 import S3Bucket

    return S3Bucket(
        bucket_name=bucket,
        bucket_folder=folder,
        credentials=AwsCredentials(
            aws_access_key_id=moto.ACCESS_KEY,
            aws_secret_access_key=SecretStr(moto.SECRET_KEY),
            region_name=REGION,
            aws_client_parameters=AwsClientParameters(endpoint_url=url),
        ),
    )


def report_files(folder: Path) -> dict[str, Path]:
    (folder / "report.html").write_text(HTML, encoding="utf-8")
    (folder / "uptime.csv").write_text("server,uptime_pct\nweb-1,99.955\n", encoding="utf-8")
    return {"report.html": folder / "report.html", "uptime.csv": folder / "uptime.csv"}


def test_the_report_is_uploaded_with_its_type_and_its_presigned_link_opens_it(
    endpoint: str, tmp_path: Path
) -> None:
    stored = store_files(
        bucket_block(endpoint), "acme/2026-10", report_files(tmp_path), timedelta(hours=2)
    )

    html = stored["report.html"]
    assert html.location == f"s3://{BUCKET}/reports/acme/2026-10/report.html"
    head = s3_client(endpoint).head_object(Bucket=BUCKET, Key="reports/acme/2026-10/report.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    assert html.link.startswith(f"{endpoint}/{BUCKET}/reports/acme/2026-10/report.html?")
    assert "X-Amz-Signature=" in html.link and "X-Amz-Expires=7200" in html.link
    assert moto.SECRET_KEY not in html.link
    assert html.expires is not None
    with urllib.request.urlopen(html.link, timeout=10) as response:  # noqa: S310 (http on loopback)
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.read().decode("utf-8") == HTML
    with urllib.request.urlopen(stored["uptime.csv"].link, timeout=10) as response:  # noqa: S310
        assert response.read() == (tmp_path / "uptime.csv").read_bytes()


def test_the_link_is_signed_with_sigv4_and_masking_leaves_it_whole(
    endpoint: str, tmp_path: Path
) -> None:
    # botocore's default S3 presigning (SigV2) names AWSAccessKeyId, which masking would cut
    # out of the notice; SigV4 names no secret-looking key.
    stored = store_files(bucket_block(endpoint), "acme/2026-11", report_files(tmp_path))
    link = stored["report.html"].link
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link and "AWSAccessKeyId" not in link
    assert redact(link) == link
    assert "X-Amz-Expires=604800" in link  # the default: 7 days


def test_a_missing_bucket_fails_with_where_and_why_and_no_secret(
    endpoint: str, tmp_path: Path
) -> None:
    with pytest.raises(ReportNotStored) as failed:
        store_files(
            bucket_block(endpoint, bucket="no-such-bucket"), "acme/2026-10", report_files(tmp_path)
        )
    message = str(failed.value)
    assert "report.html could not be stored in s3://no-such-bucket/reports" in message
    assert "NoSuchBucket" in message
    assert moto.SECRET_KEY not in message
