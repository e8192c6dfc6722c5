"""Storage through fsspec: local paths, ``file://``, ``memory://``, ``s3://`` (s3fs), ``gs://`` (gcsfs).

Every read and write of annotations, manifests, videos, caches and step outputs goes through these helpers, so the
same code serves a laptop and an object store. A URI without a scheme is a local path and is made absolute.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

import fsspec
from fsspec.core import url_to_fs

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def file_name(text: str) -> str:
    """``text`` (a video id such as ``<class>/<stem>``, a dataset name) as one file or artifact name.

    Path separators, control characters and the characters Windows refuses (``:*?"<>|``) become ``_``, and a
    leading dot is dropped; a name that had to change gets ``-<6 hex digits of SHA-256(text)>`` appended, so two
    ids that differ only there (``a/b_c``, ``a_b/c``) stay two names. Unicode letters and spaces are kept.
    """
    safe = _UNSAFE.sub("_", text).lstrip(".")
    if safe == text:
        return text
    return f"{safe or '_'}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:6]}"


def normalize_uri(uri: str) -> str:
    """An absolute form of ``uri``: local paths become absolute, ``file://`` is stripped, URIs pass through."""
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/") if not uri.endswith("://") else uri


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving ``uri`` and the path of ``uri`` within it."""
    return url_to_fs(normalize_uri(uri))


def join(uri: str, *parts: str) -> str:
    """``uri`` joined with path parts, with ``/`` separators for URIs and ``os.path`` for local paths."""
    uri = normalize_uri(uri)
    if "://" in uri:
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    """The text of a file, keeping its line endings as they are (official split files use CRLF)."""
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if "://" in normalize_uri(uri) else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def list_files(uri: str, recursive: bool = False) -> list[str]:
    """URIs of the files under ``uri`` (sorted), in the same form (scheme or local path) as ``uri``."""
    uri = normalize_uri(uri)
    fs, path = filesystem(uri)
    entries = fs.find(path) if recursive else [p for p in fs.ls(path, detail=False) if fs.isfile(p)]
    return sorted(_same_form(uri, path, p) for p in entries)


def list_dirs(uri: str) -> list[str]:
    """URIs of the immediate sub-folders of ``uri`` (sorted)."""
    uri = normalize_uri(uri)
    fs, path = filesystem(uri)
    return sorted(_same_form(uri, path, p) for p in fs.ls(path, detail=False) if fs.isdir(p))


def _same_form(uri: str, base_path: str, found: str) -> str:
    """Re-attach the scheme of ``uri`` to a path that fsspec returned for something below ``base_path``."""
    if "://" not in uri:
        return found
    relative = posixpath.relpath(found.rstrip("/"), base_path.rstrip("/"))
    return posixpath.join(uri, relative)


def remove(uri: str) -> None:
    """Delete one file (no error when it is already gone)."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path)


def checkpoint_uri(storage_path: str, checkpoint_path: str) -> str:
    """The checkpoint folder as a URI: Ray reports it as a path inside the storage filesystem (no scheme)."""
    scheme, sep, _ = normalize_uri(storage_path).partition("://")
    return f"{scheme}://{checkpoint_path}" if sep and "://" not in checkpoint_path else checkpoint_path


def ray_storage(storage_path: str):
    """Ray Train storage arguments for a local folder or an fsspec URI."""
    storage_path = normalize_uri(storage_path)
    if "://" not in storage_path:
        return None, storage_path
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(storage_path)
    return PyFileSystem(FSSpecHandler(fs)), path
