"""`Storage` over an S3-compatible store (AWS S3, MinIO) through boto3.

The code only knows an endpoint URL; credentials come from the standard `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION` variables (or any other boto3 source).
Path-style addressing and "checksums only when required" keep MinIO and other non-AWS
servers happy. Exclusive creates use a conditional PUT (`If-None-Match: *`), which S3,
MinIO and moto honour atomically, so the registry's history can never hold a torn pointer.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from piston.errors import ObjectTooLarge, StorageError, StorageUnavailable
from piston.storage.base import ObjectInfo

_CLIENTS: dict[tuple[str | None, int], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}


def s3_client(endpoint_url: str | None) -> Any:
    """One boto3 client per endpoint and process (clients are thread-safe, not fork-safe)."""
    key = (endpoint_url, os.getpid())
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            config = Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            )
            session = boto3.session.Session()
            _CLIENTS[key] = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                config=config,
            )
        return _CLIENTS[key]


class S3Storage:
    """Keys relative to `s3://bucket/prefix`; every failure becomes a one-line `StorageError`."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, uri: str, endpoint_url: str | None = None) -> S3Storage:
        if not uri.startswith("s3://"):
            raise StorageError(f"{uri} is not an s3:// URI")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri} names no bucket: write it as s3://bucket/prefix")
        return cls(bucket, prefix, endpoint_url)

    @property
    def client(self) -> Any:
        return s3_client(self.endpoint_url)

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    @contextlib.contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        """Translate boto3's failures into ours; anything else (a bug) propagates as it is."""
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            ResponseStreamingError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except NoCredentialsError:
            raise StorageError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except (BotoConnectionError, ResponseStreamingError):
            endpoint = self.endpoint_url or "the default AWS endpoint"
            raise StorageUnavailable(
                f"cannot reach S3 at {endpoint} to {action} {self._where(key)}: is the server up"
                " (PISTON_S3_ENDPOINT_URL)?"
            ) from None
        except ClientError as err:
            raise self._client_error(err, key, action) from None

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _client_error(self, err: Any, key: str, action: str) -> StorageError:
        """An error answer from the server: 5xx is worth retrying, 4xx is for the user to fix."""
        where = self._where(key)
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return StorageError(f"bucket {self.bucket} does not exist: create it first")
        if code in _MISSING:
            return StorageError(f"{where} does not exist")
        if code in _DENIED:
            return StorageError(
                f"access to {where} denied ({code}): check AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY"
            )
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if int(status or 0) >= 500 or code in ("SlowDown", "ServiceUnavailable"):
            return StorageUnavailable(f"S3 failed to {action} {where}: {code or status}")
        return StorageError(f"cannot {action} {where}: {code or err}")

    # -- the Storage protocol ---------------------------------------------------------------

    def read(self, key: str) -> bytes:
        return self.get(key)[0]

    def get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """Content and info (size, ETag, user metadata) in one GET; the size is checked first."""
        with self._errors(key, "read"):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            size = int(response.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                response["Body"].close()
                raise ObjectTooLarge(
                    f"{self._where(key)} is {size} bytes, over the {max_bytes} limit")
            data = response["Body"].read()
        return data, ObjectInfo(key, len(data), _etag(response), dict(response.get("Metadata", {})))

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """One PUT: S3 replaces an object atomically, readers never see a mix."""
        with self._errors(key, "write"):
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, Metadata=metadata or {}
            )

    def create(self, key: str, data: bytes) -> bool:
        """A conditional PUT that fails when the key exists; False when it already did."""
        from botocore.exceptions import ClientError

        with self._errors(key, "create"):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False  # exists, or a concurrent create of the same key is winning
                raise
        return True

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        """A conditional PUT on the ETag (`If-Match`), or an exclusive create without one."""
        from botocore.exceptions import ClientError

        if etag is None:
            return self.create(key, data)
        with self._errors(key, "replace"):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag
                )
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "ConditionalRequestConflict", *_MISSING):
                    return False
                raise
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        root = self._key("")
        full = self._key(prefix)
        if prefix == "" and root:
            full = root + "/"
        strip = len(root) + 1 if root else 0
        found = []
        with self._errors(prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Contents", []):
                    rel = item["Key"][strip:]
                    if rel and not rel.endswith("/"):
                        found.append(ObjectInfo(rel, int(item["Size"]), _etag(item)))
        return sorted(found, key=lambda o: o.key)

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        with self._errors(key, "inspect"):
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code", "")) in _MISSING:
                    return None
                raise
        return ObjectInfo(
            key, int(response["ContentLength"]), _etag(response), dict(response.get("Metadata", {}))
        )

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(self.bucket, self._key(prefix), self.endpoint_url)

    def local_path(self, key: str) -> Path | None:
        return None


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


def ensure_buckets(uris: list[str], endpoint_url: str | None) -> list[str]:
    """Create the buckets named by `s3://bucket/...` URIs that do not exist; returns those made."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint_url)
    made = []
    for bucket in sorted({S3Storage.from_uri(u).bucket for u in uris}):
        with S3Storage(bucket, "", endpoint_url)._errors("", "create"):
            try:
                client.head_bucket(Bucket=bucket)
                continue
            except ClientError:
                pass
            client.create_bucket(Bucket=bucket)
        made.append(bucket)
    return made


def main(argv: list[str] | None = None) -> int:
    """`python -m piston.storage.s3 s3://bucket ...`: the bucket-init step of the stack."""
    import logging
    import sys

    from piston.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uris = sys.argv[1:] if argv is None else argv
    try:
        made = ensure_buckets(uris, load_settings().s3_endpoint_url)
    except StorageError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    logging.getLogger(__name__).info("buckets ready (created: %s)", ", ".join(made) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
