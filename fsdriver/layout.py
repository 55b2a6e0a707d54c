"""The object layout: which backend key holds which file, and which names are allowed.

The layout is a contract shared by the mount, the Python API and the CLI (docs/storage-layout.md):

    pipeline/<id>/<path>      data scoped to one pipeline
    user/<name>/<path>        data that persists, private to one user
    kv/<store>/<key>.json     one record of a key/value store

Namespace names (<id>, <name>, <store>) match NAME_RE.  A path is one or more segments joined by
"/"; each segment is non-empty, not "." or "..", has no NUL and is at most 255 bytes of UTF-8.
Everything here is pure and synchronous; nothing touches a backend.
"""

import re

from .errors import InvalidName, NameTooLong

TREES = ("pipeline", "user", "kv")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
MAX_SEGMENT_BYTES = 255


def check_tree(tree: str) -> str:
    if tree not in TREES:
        raise InvalidName(f"unknown tree {tree!r}: expected one of {', '.join(TREES)}")
    return tree


def check_name(name: str, what: str = "name") -> str:
    """Validate a namespace name (pipeline id, user name or store name)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidName(
            f"invalid {what} {name!r}: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
        )
    return name


def check_segment(segment: str) -> str:
    """Validate one path segment (a file or directory name)."""
    if not isinstance(segment, str):
        raise InvalidName(f"invalid path segment {segment!r}: not a string")
    if segment == "":
        raise InvalidName("invalid path: empty segment (leading, trailing or doubled '/')")
    if segment in (".", ".."):
        raise InvalidName(f"invalid path segment {segment!r}: '.' and '..' are not allowed")
    if "\0" in segment:
        raise InvalidName(f"invalid path segment {segment!r}: contains NUL")
    if "/" in segment:
        raise InvalidName(f"invalid path segment {segment!r}: contains '/'")
    try:
        size = len(segment.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(f"invalid path segment {segment!r}: not valid UTF-8") from None
    if size > MAX_SEGMENT_BYTES:
        raise NameTooLong(
            f"invalid path segment {segment[:32]!r}...: {size} bytes, at most {MAX_SEGMENT_BYTES}"
        )
    return segment


def split_path(path: str, allow_empty: bool = False) -> list[str]:
    """Split a relative path into validated segments.

    A trailing "/" is tolerated (``"a/b/"`` names the same place as ``"a/b"``); a leading "/"
    or a doubled "/" is refused.  With ``allow_empty`` the empty path (the store root) is allowed.
    """
    if not isinstance(path, str):
        raise InvalidName(f"invalid path {path!r}: not a string")
    if path == "" and allow_empty:
        return []
    if path.startswith("/"):
        raise InvalidName(f"invalid path {path!r}: must be relative (no leading '/')")
    if path.endswith("/"):
        path = path[:-1]
    return [check_segment(s) for s in path.split("/")]


def root_prefix(tree: str, name: str) -> str:
    """The key prefix of one namespace, e.g. ``pipeline/p1/``."""
    check_tree(tree)
    check_name(name, {"pipeline": "pipeline id", "user": "user name", "kv": "store name"}[tree])
    return f"{tree}/{name}/"

