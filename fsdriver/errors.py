"""The exceptions the storage backends raise.

Every backend turns its own failures (OSError, botocore errors) into these, so that callers —
the Python API, the CLI and the filesystem's errno boundary (`fsdriver.errno_boundary`, which
turns them into errno values for the mount) — know one vocabulary.  The messages
name the key and the reason; they never contain object data.
"""


class BackendError(Exception):
    """Base class: something went wrong talking to the storage backend."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class NotFound(BackendError):
    """The object (or bucket) does not exist."""


class BucketNotFound(NotFound):
    """The S3 bucket itself does not exist."""


class PreconditionFailed(BackendError):
    """A conditional write lost: the object's etag is not the expected one, or it already exists."""


class PermissionDenied(BackendError):
    """The backend refused the credentials or the operation."""


class Unavailable(BackendError):
    """The backend could not be reached or kept failing after retries."""


class NoAnswer(Unavailable):
    """The backend did not answer at all: the connection or the read timed out (a black-holed
    endpoint), as opposed to a quick refusal or an error answer (503, throttling)."""


class OutOfDescriptors(Unavailable):
    """This process (EMFILE) or the system (ENFILE) has no file descriptor left for a connection."""

    def __init__(self, message: str, key: str | None = None, errno: int = 24):
        super().__init__(message, key)
        self.errno = errno


class InvalidRequest(BackendError):
    """The backend rejected the request as malformed (bad key, bad range, object vs prefix clash)."""


class KeyIsPrefix(InvalidRequest):
    """An object put where keys exist below ``key/``, on a backend where a name cannot be both
    (disk): a file where a directory is (EISDIR)."""


class ParentIsObject(InvalidRequest):
    """An object put below an object, on a backend where a name cannot be both (disk): a parent
    of the key is a file, not a directory (ENOTDIR)."""


class NoBackendDirectory(FileNotFoundError):
    """A local backend directory that was named (argument, ``$STASHFS_BACKEND``, the config file)
    does not exist and was not to be created: a mistyped path would read as an empty store."""

    def __init__(self, path: str):
        super().__init__(2, "backend directory does not exist (check the path, or pass create=True "
                            "to make a new store there)", path)
        self.path = path


class InvalidName(ValueError):
    """A pipeline id, user name, store name or path segment that stashfs refuses."""


class NameTooLong(InvalidName):
    """A path segment over 255 bytes (ENAMETOOLONG at the filesystem)."""
