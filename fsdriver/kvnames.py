"""Key/value records: key <-> file name encoding, and where TTLs are kept.

A record of store ``s`` with key ``k`` is the object ``kv/s/<encode(k)>.json``; its content is the
record's JSON value.  The encoding is a bijection between keys and valid record file names:

    "%" -> "%25"      "/" -> "%2F"      NUL -> "%00"      a leading "." -> "%2E"

and nothing else is escaped (uppercase hex only).  A file name that ends in ".json" but contains
any other "%" sequence does not decode (``InvalidName``), so no two names mean the same key.

A TTL is an empty marker object ``kv/s/.expires/<encode(k)>.json@<unix seconds>@<etag>``: it
applies only while the record still has that etag, so writing the record again (without a TTL)
ends it without an extra request.  One LIST of the marker prefix gives every expiry of a store.
"""

from .errors import InvalidName, NameTooLong

SUFFIX = ".json"
MAX_NAME_BYTES = 255  # a file name: the encoded key plus ".json"
EXPIRES = ".expires/"

_ESCAPES = {"%": "%25", "/": "%2F", "\0": "%00"}
_UNESCAPES = {"25": "%", "2F": "/", "00": "\0"}


def encode(key: str) -> str:
    """The file name (without ".json") of ``key``; InvalidName for a key that cannot have one."""
    if not isinstance(key, str):
        raise TypeError(f"keys are strings, not {type(key).__name__}")
    if key == "":
        raise InvalidName("invalid key: empty")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"invalid key {key!r}: not valid UTF-8") from None
    out = "".join(_ESCAPES.get(c, c) for c in key)
    if out.startswith("."):
        out = "%2E" + out[1:]
    size = len(out.encode("utf-8")) + len(SUFFIX)
    if size > MAX_NAME_BYTES:
        raise NameTooLong(
            f"invalid key {key[:40]!r}...: its file name would be {size} bytes, at most {MAX_NAME_BYTES}"
        )
    return out


def decode(name: str) -> str:
    """The key of an encoded name (without ".json"); InvalidName if it is not a canonical encoding."""
    if name == "":
        raise InvalidName("invalid record name: empty key")
    if name.startswith("."):
        raise InvalidName(f"invalid record name {name!r}: a leading '.' is written %2E")
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "%":
            code = name[i + 1 : i + 3]
            if i == 0 and code == "2E":
                out.append(".")
            elif code in _UNESCAPES:
                out.append(_UNESCAPES[code])
            else:
                raise InvalidName(
                    f"invalid record name {name!r}: '%{code}' is not an escape stashfs writes "
                    "(only %25 for '%', %2F for '/', %00 for NUL and a leading %2E for '.')"
                )
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def record_name(key: str) -> str:
    return encode(key) + SUFFIX


def is_scratch(name: str) -> bool:
    """Names in a store that are not records: kept by the mount only (editor and temp files)."""
    return not name.endswith(SUFFIX) or name.startswith(".")


def key_of(name: str) -> str:
    """The key of a record file name ``<encoded>.json`` (InvalidName otherwise)."""
    if is_scratch(name):
        raise InvalidName(f"{name!r} is not a record file name (<key>.json)")
    return decode(name[: -len(SUFFIX)])


def expiry_key(store_prefix: str, name: str, expires: int, etag: str) -> str:
    return f"{store_prefix}{EXPIRES}{name}@{expires}@{etag}"


def parse_expiry(store_prefix: str, key: str) -> tuple[str, int, str] | None:
    """(record file name, expiry time, etag) of a TTL marker key, or None if it is not one."""
    rest = key[len(store_prefix) + len(EXPIRES):]
    parts = rest.rsplit("@", 2)
    if not key.startswith(store_prefix + EXPIRES) or len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]
