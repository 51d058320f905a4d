"""Reading images out of requests, and the 4xx every bad input maps to."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request

from piston.errors import ImageError, PistonError

# HTTP status for each way an input can be wrong (ImageError kinds plus request-level ones).
STATUS_BY_KIND = {
    "empty": 400,
    "missing_field": 400,
    "bad_request": 400,
    "too_large": 413,
    "too_many_images": 413,
    "too_many_pixels": 413,
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    "not_an_image": 415,
    "truncated": 422,
}
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class InputError(PistonError):
    """A request the service cannot score; `kind` picks the status and the metrics label."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def status(self) -> int:
        return STATUS_BY_KIND.get(self.kind, 400)

    @classmethod
    def from_image_error(cls, err: ImageError) -> InputError:
        return cls(err.kind, err.reason)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form_files(request: Request, field: str, max_files: int) -> list[bytes]:
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 16)
    except Exception as err:  # malformed multipart, too many parts
        raise InputError("bad_request", f"the form could not be read: {err}") from None
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


async def read_one_image(request: Request) -> bytes:
    """The image of a `/classify` request: multipart field `image`, or the raw body."""
    media = _media_type(request)
    if media in FORM_TYPES:
        return (await _form_files(request, "image", 1))[0]
    if media.startswith("image/") or media == "application/octet-stream":
        return await request.body()
    raise InputError(
        "unsupported_media_type",
        f"content type {media or 'none'!r}: send multipart/form-data with a file field"
        " 'image', or the image itself with an image/* content type",
    )


async def read_images(request: Request, max_images: int) -> list[bytes]:
    """The images of a `/classify_batch` request: the repeated multipart field `images`."""
    media = _media_type(request)
    if media not in FORM_TYPES:
        raise InputError(
            "unsupported_media_type",
            f"content type {media or 'none'!r}: send multipart/form-data with repeated"
            " file fields 'images'",
        )
    return await _form_files(request, "images", max_images)
