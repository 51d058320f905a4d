"""One small interface over local folders and S3 prefixes.

Data sets, batch inputs, results and the bundle registry all go through `Storage`, so each
accepts either a local path or an `s3://bucket/prefix` URI.
"""

from __future__ import annotations

from pathlib import Path

from piston.storage.base import ObjectInfo, Storage
from piston.storage.local import LocalStorage

__all__ = ["LocalStorage", "ObjectInfo", "Storage", "open_storage"]


def open_storage(location: str | Path, s3_endpoint_url: str | None = None) -> Storage:
    """Storage for a local path or an `s3://bucket/prefix` URI."""
    text = str(location)
    if text.startswith("s3://"):
        from piston.storage.s3 import S3Storage  # boto3 only where S3 is used

        return S3Storage.from_uri(text, endpoint_url=s3_endpoint_url)
    return LocalStorage(text)
