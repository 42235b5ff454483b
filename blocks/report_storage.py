"""Where reports are delivered: Prefect's own file-system blocks, and a link to each file.

caretaker has no storage block type of its own. The inventory's ``reports.storage`` names
any Prefect ``WritableFileSystem`` block (written through its common ``write_path``):

- prefect-aws ``S3Bucket`` (bucket, folder, ``AwsCredentials`` with an optional endpoint):
  the files are uploaded with their content type, so that a browser shows report.html
  rather than downloading it, and the link is a presigned ``GET`` URL valid for the
  client's ``reports.link_expiry`` (at most 7 days);
- Prefect's ``LocalFileSystem`` (a folder, e.g. a shared mount): the link is ``file://``;
- any other ``WritableFileSystem``: the link is the location its ``write_path`` returns.

Unset, a report goes to an unsaved ``LocalFileSystem`` on ``<data>/reports`` (the folder
reports were always written to), so the demo and a fresh machine need no set-up.

A presigned URL is a capability (whoever has it reads that one file until it expires), not
a credential: it is what the client's contact is sent. It never contains the secret key.
"""

from __future__ import annotations

import inspect
import mimetypes
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, Field

from core.errors import ConfigError, ReportNotStored
from core.redact import redact
from core.settings import settings

__all__ = [
    "StoredFile",
    "content_type",
    "default_report_storage",
    "describe_storage",
    "load_report_storage",
    "store_files",
]

#: The Prefect block capability every file-system block that can be written to declares.
WRITE_CAPABILITY = "write-path"


class StoredFile(BaseModel):
    """One report file in its storage: where it is, and the link that opens it."""

    name: str = Field(description="The file's name (report.html, uptime.csv, ...).")
    location: str = Field(
        description="Where it is stored: a local path, or s3://bucket/key; no secret."
    )
    link: str = Field(description="A URL that opens it: file://..., or a presigned https URL.")
    expires: datetime | None = Field(
        default=None, description="When the link stops working (presigned URLs); None: never."
    )


def default_report_storage() -> LocalFileSystem:
    """The storage of a client without ``reports.storage``: ``<data>/reports``, not saved."""
    return LocalFileSystem(basepath=str(settings().data / "reports"))


def _block_reference(name: str) -> str:
    """``<type slug>/<name>`` of the one writable file-system block called ``name``."""
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/block_documents/filter",
            json={
                "block_documents": {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}},
                "block_schemas": {"block_capabilities": {"all_": [WRITE_CAPABILITY]}},
                "include_secrets": False,
                "limit": 10,
            },
        )
        response.raise_for_status()
        documents: list[dict[str, Any]] = response.json()
    slugs = sorted({doc["block_type"]["slug"] for doc in documents})
    if not slugs:
        raise ConfigError(
            f"report storage block {name!r} does not exist on the Prefect API"
            " (an S3Bucket or LocalFileSystem block of that name; or leave reports.storage"
            " unset for the local folder)"
        )
    if len(slugs) > 1:
        raise ConfigError(
            f"report storage block name {name!r} is ambiguous (types: {', '.join(slugs)})"
        )
    return f"{slugs[0]}/{name}"


def load_report_storage(name: str | None) -> WritableFileSystem:
    """The storage block the inventory names (its bare block name), or the default folder.

    Raises:
        ConfigError: no writable file-system block has that name, or several types do.
    """
    if name is None:
        return default_report_storage()
    block = Block.load(_block_reference(name))
    if not isinstance(block, WritableFileSystem):  # pragma: no cover - filtered by capability
        raise ConfigError(f"block {name!r} is a {type(block).__name__}, not a file system")
    return block


def describe_storage(storage: WritableFileSystem) -> str:
    """The storage in words for logs and messages: ``s3://bucket/folder``, a folder path."""
    bucket = getattr(storage, "bucket_name", None)
    if bucket is not None:
        folder = str(getattr(storage, "bucket_folder", "") or "").strip("/")
        return f"s3://{bucket}/{folder}".rstrip("/")
    basepath = getattr(storage, "basepath", None)
    return str(basepath) if basepath else type(storage).__name__


def content_type(name: str) -> str:
    """The Content-Type a file is served with (``text/html; charset=utf-8`` for the report)."""
    guessed, _ = mimetypes.guess_type(name)
    kind = guessed or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


def _sync(value: Any) -> Any:
    """Prefect's block methods dispatch to their async twin inside an event loop."""
    return run_coro_as_sync(value) if inspect.iscoroutine(value) else value


def _is_s3(storage: WritableFileSystem) -> bool:
    return hasattr(storage, "bucket_name") and hasattr(storage, "upload_from_file_object")


def _presigning_client(credentials: Any) -> Any:
    """An S3 client of the block's credentials that signs with SigV4. botocore presigns S3
    URLs with SigV2 by default (``?AWSAccessKeyId=...&Signature=...``), whose key name
    masking (core/redact.py) would cut out of the notice; SigV4 carries
    ``X-Amz-Credential`` and ``X-Amz-Signature`` instead, and every region accepts it."""
    from botocore.config import Config

    params = dict(credentials.aws_client_parameters.get_params_override())
    sigv4 = Config(signature_version="s3v4")
    params["config"] = params["config"].merge(sigv4) if params.get("config") else sigv4
    return credentials.get_boto3_session().client("s3", **params)


def _store_s3(storage: Any, key: str, path: Path, expiry: timedelta) -> StoredFile:
    signed_at = datetime.now(UTC)
    with path.open("rb") as handle:
        bucket_key = _sync(
            storage.upload_from_file_object(
                handle, key, ExtraArgs={"ContentType": content_type(path.name)}
            )
        )
    link = _presigning_client(storage.credentials).generate_presigned_url(
        "get_object",
        Params={"Bucket": storage.bucket_name, "Key": bucket_key},
        ExpiresIn=int(expiry.total_seconds()),
    )
    return StoredFile(
        name=path.name,
        location=f"s3://{storage.bucket_name}/{bucket_key}",
        link=str(link),
        expires=signed_at + expiry,
    )


def _store(storage: WritableFileSystem, key: str, path: Path) -> StoredFile:
    written = str(_sync(storage.write_path(key, path.read_bytes())))
    if isinstance(storage, LocalFileSystem):
        return StoredFile(name=path.name, location=written, link=Path(written).as_uri())
    return StoredFile(name=path.name, location=written, link=written)


def store_files(
    storage: WritableFileSystem,
    prefix: str,
    files: Mapping[str, Path | str],
    expiry: timedelta = timedelta(days=7),
) -> dict[str, StoredFile]:
    """Write each file to ``<prefix>/<name>`` in ``storage`` and make its link.

    Args:
        storage: the storage block (:func:`load_report_storage`).
        prefix: the folder in it, ``<client>/<period>``.
        files: the local files by name.
        expiry: how long an S3 link stays valid (1 s to 7 days).

    Returns:
        Each file's location and link, by name, in the order given.

    Raises:
        ReportNotStored: a file could not be written or linked (the storage's error, with
            any secret masked, is in the message; files written before it stay).
    """
    seconds = expiry.total_seconds()
    if not 1 <= seconds <= 7 * 86400:
        raise ReportNotStored(f"link expiry {expiry} is outside 1 s to 7 days")
    stored: dict[str, StoredFile] = {}
    for name, local in files.items():
        path = Path(local)
        key = f"{prefix.strip('/')}/{name}"
        try:
            if _is_s3(storage):
                stored[name] = _store_s3(storage, key, path, expiry)
            else:
                stored[name] = _store(storage, key, path)
        except Exception as exc:  # boto3, fsspec, OS errors: one boundary, one error
            detail = redact(" ".join(str(exc).split()) or type(exc).__name__)
            raise ReportNotStored(
                f"{name} could not be stored in {describe_storage(storage)} as {key}:"
                f" {type(exc).__name__}: {detail}"
            ) from exc
    return stored
