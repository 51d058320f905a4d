"""Reading images out of requests, and the 4xx every bad input maps to.

The BentoML APIs declare their inputs as image files (so `/docs.json`, the Swagger page and
`bentoml.SyncHTTPClient` send multipart), but parse the request here: raw-body uploads
work too, and a bad request reaches the API method as an `InputError` it answers with our
JSON shape instead of BentoML's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from piston.errors import InputError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
ImageFile = Annotated[Path, ContentType("image/*")]


class Upload:
    """A request's images, read when the API method asks (so its errors reach the method)."""

    def __init__(self, request: Request) -> None:
        self.request = request

    async def one(self) -> bytes:
        """`/classify`: multipart field `image`, or the raw body with an image content type."""
        media = _media_type(self.request)
        if media in FORM_TYPES:
            return (await _form_files(self.request, "image", 1))[0]
        if media.startswith("image/") or media == "application/octet-stream":
            return await self.request.body()
        raise InputError(
            "unsupported_media_type",
            f"content type {media or 'none'!r}: send multipart/form-data with a file field"
            " 'image', or the image itself with an image/* content type",
        )

    async def many(self, max_images: int) -> list[bytes]:
        """`/classify_batch`: the repeated multipart field `images`."""
        media = _media_type(self.request)
        if media not in FORM_TYPES:
            raise InputError(
                "unsupported_media_type",
                f"content type {media or 'none'!r}: send multipart/form-data with repeated"
                " file fields 'images'",
            )
        return await _form_files(self.request, "images", max_images)


class _UploadInput(bentoml.IODescriptor):
    """Declares file fields for the schema; the request itself is read by `Upload`."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        # What BentoML reads of the parsed input: `model_fields` and an attribute per field. A
        # plain namespace, not a model instance: constructing one and BentoML's access to an
        # instance's `model_fields` (a deprecation warning each time) cost ~40 us a request.
        upload = Upload(request)
        return SimpleNamespace(model_fields=cls.model_fields,
                               **dict.fromkeys(cls.model_fields, upload))


class ClassifyInput(_UploadInput):
    image: ImageFile = Field(description="the image (JPEG, PNG, BMP, TIFF, WEBP, GIF, MPO);"
                             " or send it as the raw body with an image/* content type")


class ClassifyBatchInput(_UploadInput):
    images: list[ImageFile] = Field(description="the images, as repeated multipart fields")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form_files(request: Request, field: str, max_files: int) -> list[bytes]:
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 16)
    except (MultiPartException, HTTPException) as err:  # malformed multipart, too many parts
        detail = err.message if isinstance(err, MultiPartException) else err.detail
        raise InputError("bad_request", f"the form could not be read: {detail}") from None
    try:
        values = form.getlist(field)
        if not values:
            present = ", ".join(sorted(set(form.keys()))) or "none"
            raise InputError(
                "missing_field", f"no file field {field!r} in the form (fields sent: {present})"
            )
        if len(values) > max_files:
            raise InputError(
                "too_many_images", f"{len(values)} images sent, at most {max_files} per request"
            )
        files = []
        for value in values:
            if not isinstance(value, UploadFile):
                raise InputError("missing_field", f"field {field!r} must be a file, not text")
            files.append(await value.read())
        return files
    finally:
        await form.close()
