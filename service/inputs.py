"""Reading images out of requests, and the 4xx every bad input maps to.

The BentoML APIs declare their inputs as image files (so `/docs.json`, the Swagger page and
`bentoml.SyncHTTPClient` send multipart), but parse the request here: raw-body uploads
work too, and a bad request reaches the API method as an `InputError` it answers with our
JSON shape instead of BentoML's.
"""

from __future__ import annotations

from collections.abc import Iterable
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
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})
EXPLAIN = Field(False, description="also answer a heatmap of the predicted class (PNG, at the"
                " image's aspect) and the box of its hottest region: `explanation`. As a form"
                " field or in the query (`?explain=true`)")


class Upload:
    """A request's images, read when the API method asks (so its errors reach the method)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.texts: dict[str, list[str]] = {}  # the form's text fields, once read

    async def one(self) -> bytes:
        """`/classify`: multipart field `image`, or the raw body with an image content type."""
        media = _media_type(self.request)
        if media in FORM_TYPES:
            return (await self._form_files("image", 1))[0]
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
        return await self._form_files("images", max_images)

    async def _form_files(self, field: str, max_files: int) -> list[bytes]:
        try:
            form = await self.request.form(max_files=max_files + 1, max_fields=max_files + 16)
        except (MultiPartException, HTTPException) as err:  # malformed multipart, many parts
            detail = err.message if isinstance(err, MultiPartException) else err.detail
            raise InputError("bad_request", f"the form could not be read: {detail}") from None
        try:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    self.texts.setdefault(key, []).append(value)
            return await _files(form.getlist(field), form.keys(), field, max_files)
        finally:
            await form.close()


class Flag:
    """A yes/no option of a request, from its query or (once the images are read) its form."""

    def __init__(self, upload: Upload, name: str) -> None:
        self.upload = upload
        self.name = name

    def value(self) -> bool:
        """Read after the images: a form's text fields are known once it has been parsed.
        Refused with 400 unless every value given is a yes or a no; the last one counts."""
        given = [*self.upload.request.query_params.getlist(self.name),
                 *self.upload.texts.get(self.name, [])]
        result = False
        for raw in given:
            text = raw.strip().strip('"').lower()  # BentoML's client sends JSON: true, "true"
            if text not in TRUE | FALSE:
                raise InputError("bad_request", f"{self.name} must be true or false (or 1/0,"
                                 f" yes/no, on/off), not {raw[:40]!r}")
            result = text in TRUE
        return result


class _UploadInput(bentoml.IODescriptor):
    """Declares the fields for the schema; the request itself is read by `Upload`."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        # What BentoML reads of the parsed input: `model_fields` and an attribute per field. A
        # plain namespace, not a model instance: constructing one and BentoML's access to an
        # instance's `model_fields` (a deprecation warning each time) cost ~40 us a request.
        upload = Upload(request)
        return SimpleNamespace(model_fields=cls.model_fields, **{
            name: Flag(upload, name) if info.annotation in (bool, "bool") else upload
            for name, info in cls.model_fields.items()})


class ClassifyInput(_UploadInput):
    image: ImageFile = Field(description="the image (JPEG, PNG, BMP, TIFF, WEBP, GIF, MPO);"
                             " or send it as the raw body with an image/* content type")
    explain: bool = EXPLAIN


class ClassifyBatchInput(_UploadInput):
    images: list[ImageFile] = Field(description="the images, as repeated multipart fields")
    explain: bool = EXPLAIN


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _files(values: list[Any], present: Iterable[str], field: str,
                 max_files: int) -> list[bytes]:
    """The uploaded files of `field`: at least one, at most `max_files`, all files."""
    if not values:
        sent = ", ".join(sorted(set(present))) or "none"
        raise InputError("missing_field", f"no file field {field!r} in the form (fields sent:"
                         f" {sent})")
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
