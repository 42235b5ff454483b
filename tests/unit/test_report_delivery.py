"""Report delivery without a server: a real folder as storage, the notice's text, the bounds.

S3 (moto's server) and the whole path through a deployment are in
tests/integration/test_report_storage_s3.py and tests/integration/test_deploy_e2e.py.
"""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prefect.filesystems import LocalFileSystem

from blocks.report_storage import content_type, default_report_storage, store_files
from core.errors import ReportNotStored
from tasks.notify import notice_report

HTML = "<!DOCTYPE html><title>r</title><p>99.9\u00a0%</p>\n"


def report_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(HTML, encoding="utf-8")
    (folder / "uptime.csv").write_text("server,uptime_pct\nweb-1,99.9\n", encoding="utf-8")
    return {"report.html": folder / "report.html", "uptime.csv": folder / "uptime.csv"}


def test_a_folder_storage_gets_every_file_under_client_and_period_with_a_file_link(
    tmp_path: Path,
) -> None:
    files = report_files(tmp_path / "work")
    storage = LocalFileSystem(basepath=str(tmp_path / "share"))

    stored = store_files(storage, "acme/2026-10", files)

    assert list(stored) == ["report.html", "uptime.csv"]
    html = stored["report.html"]
    assert Path(html.location) == tmp_path / "share" / "acme" / "2026-10" / "report.html"
    assert html.link == Path(html.location).as_uri() and html.link.startswith("file:///")
    assert html.expires is None
    with urllib.request.urlopen(html.link) as response:  # noqa: S310 (the file link opens)
        assert response.read().decode("utf-8") == HTML
    assert (tmp_path / "share/acme/2026-10/uptime.csv").read_bytes() == files[
        "uptime.csv"
    ].read_bytes()


def test_the_default_storage_is_the_data_folder_and_storing_in_place_keeps_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARETAKER_DATA_DIR", str(tmp_path / "data"))
    storage = default_report_storage()
    assert Path(str(storage.basepath)) == tmp_path / "data" / "reports"
    # the flow's default out_dir is the same folder: the files are stored onto themselves
    files = report_files(tmp_path / "data" / "reports" / "acme" / "2026-10")

    stored = store_files(storage, "acme/2026-10", files)

    assert Path(stored["report.html"].location) == files["report.html"]
    assert files["report.html"].read_text(encoding="utf-8") == HTML


def test_a_storage_that_cannot_be_written_says_which_file_and_where(tmp_path: Path) -> None:
    files = report_files(tmp_path / "work")
    blocker = tmp_path / "share"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ReportNotStored, match=r"report.html could not be stored in .*share"):
        store_files(LocalFileSystem(basepath=str(blocker)), "acme/2026-10", files)


def test_a_key_outside_the_storage_folder_is_refused(tmp_path: Path) -> None:
    files = report_files(tmp_path / "work")
    with pytest.raises(ReportNotStored, match="outside of the base path"):
        store_files(LocalFileSystem(basepath=str(tmp_path / "share")), "../elsewhere", files)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("expiry", [timedelta(0), timedelta(days=7, seconds=1)])
def test_a_link_expiry_beyond_s3s_bounds_is_refused(tmp_path: Path, expiry: timedelta) -> None:
    files = report_files(tmp_path / "work")
    with pytest.raises(ReportNotStored, match="link expiry"):
        store_files(LocalFileSystem(basepath=str(tmp_path / "share")), "acme/x", files, expiry)
    assert not (tmp_path / "share").exists()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("report.html", "text/html; charset=utf-8"),
        ("uptime.csv", "text/csv; charset=utf-8"),
        ("report.pdf", "application/pdf"),
        ("noextension", "application/octet-stream"),
    ],
)
def test_each_file_is_served_with_its_content_type(name: str, kind: str) -> None:
    assert content_type(name) == kind


def test_the_notice_gives_the_contact_the_period_the_links_and_their_expiry() -> None:
    london = ZoneInfo("Europe/London")
    link = (
        "http://127.0.0.1:5000/reports/acme/2026-10/report.html?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIDEXAMPLE%2F20261101%2Feu-west-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20261101T060000Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=0123abcd"
    )
    subject, body = notice_report(
        "ACME Logistics Ltd",
        "ACME IT Operations <it-ops@acme.example>",
        "2026-10",
        datetime(2026, 10, 1, tzinfo=london),
        datetime(2026, 11, 1, tzinfo=london),
        {"report.html": link, "uptime.csv": "file:///srv/reports/acme/2026-10/uptime.csv"},
        headline=["Uptime (all servers): 99.955 %; SLA: met."],
        expires=datetime(2026, 11, 8, 6, 0, tzinfo=UTC),
        tz=london,
    )
    assert subject == "[caretaker] ACME Logistics Ltd: maintenance report 2026-10"
    assert "For ACME IT Operations <it-ops@acme.example>." in body
    assert "for 2026-10 (2026-10-01 to 2026-10-31) is ready" in body  # the end is exclusive
    assert "Uptime (all servers): 99.955 %; SLA: met." in body
    assert f"report.html: {link}\n" in body  # whole: masking must not break the link
    assert "uptime.csv: file:///srv/reports/acme/2026-10/uptime.csv" in body
    assert "The links work until 2026-11-08 06:00 GMT." in body


def test_a_notice_without_expiry_says_nothing_about_it_and_masks_a_secret() -> None:
    _, body = notice_report(
        "Globex",
        "Ops <ops@globex.example>",
        "2026-Q3",
        datetime(2026, 7, 1, tzinfo=UTC),
        datetime(2026, 10, 1, tzinfo=UTC),
        {"report.html": "https://reports.example/x?token=hunter2"},
    )
    assert "work until" not in body
    assert "hunter2" not in body
    assert "(2026-07-01 to 2026-09-30)" in body


def test_s3_links_are_signed_with_sigv4_so_masking_leaves_them_whole() -> None:
    # Signing is local (no request is made): botocore's S3 default, SigV2, would name
    # AWSAccessKeyId in the query, which the notice's masking cuts out.
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    from blocks.report_storage import _presigning_client
    from core.redact import redact

    credentials = AwsCredentials(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key=SecretStr("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9"),
    )
    link = _presigning_client(credentials).generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "acme/2026-10/report.html"}, ExpiresIn=60
    )
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link and "AWSAccessKeyId" not in link
    assert "wJalrXUtnFEMI" not in link
    assert redact(link) == link
