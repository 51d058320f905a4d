"""Formats of the names that become paths, object keys or Redis keys: checked before use.

A bundle version or job id from a request, the queue or the command line is refused unless
it matches, so `../x` or `/etc/passwd` never reaches a path or a key.
"""

from __future__ import annotations

import re

from piston.errors import InvalidName

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
NOTHING = "none"  # `expected` for "nothing is in production yet": never a version


def check_version(version: str) -> str:
    """`version` if it is a well-formed bundle version (what `new_version` makes, and the like)."""
    if (not isinstance(version, str) or not VERSION_RE.fullmatch(version) or ".." in version
            or version == NOTHING):
        raise InvalidName(
            f"{str(version)[:100]!r} is not a bundle version: letters, digits, '.', '_' and '-'"
            " only, no '..' (see `piston models list`)")
    return version


def check_job_id(job_id: str) -> str:
    """`job_id` if it is a well-formed job id (a UUID, or letters, digits, '_' and '-')."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidName(f"{str(job_id)[:100]!r} is not a job id")
    return job_id
