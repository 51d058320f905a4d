"""Our own error types: the edges (CLI, HTTP, tasks) turn them into a one-line message or a 4xx."""


class PistonError(Exception):
    """Base of every error a user can fix; `str(err)` is the one-line message shown to them."""


class ImageError(PistonError):
    """An input that is not a usable image. `kind` names the failure for metrics and HTTP codes."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class DataError(PistonError):
    """A data set that cannot be trained on as given."""


class RegistryError(PistonError):
    """A registry operation that cannot be carried out (unknown version, failed gates, ...)."""


class UnknownBundle(RegistryError):
    """A version that no bundle in the registry has."""


class StorageError(PistonError):
    """A storage location that cannot be read or written."""


class ConfigError(PistonError):
    """A training configuration that does not validate."""


class StorageUnavailable(StorageError):
    """The store could not be reached or failed on its side: worth retrying later."""
