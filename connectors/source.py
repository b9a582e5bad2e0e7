"""What a source string names: which reader reads it, and where it lives.

A source is a local path or a URI. Files are recognised by suffix, databases by
scheme; any other scheme is a filesystem that ``pyarrow.fs.FileSystem.from_uri``
understands (``file://``, ``s3://``, ``gs://``, ``hdfs://``, ...)::

    data/bank.csv                       -> delimited, path resolved against base_dir
    file:///srv/data/bank.parquet       -> parquet, local path
    data/bank/  (a folder, no suffix)   -> parquet dataset, hive partitioning (connectors.partitioned)
    s3://bucket/bank.parquet            -> parquet, pyarrow S3 filesystem
    sqlite:///bank.db?table=customers   -> database (see connectors.database)
    postgresql://u:pw@host/db?table=t   -> database

Nothing here reads data: :func:`locate` only classifies and resolves paths.
:func:`mask` hides passwords before any source text reaches a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import pyarrow.fs

# Suffix -> default separator. Matching is case-insensitive, longest suffix first.
DELIMITED_SUFFIXES = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".txt": ","}
PARQUET_SUFFIXES = (".parquet", ".pq")
SQLITE_SCHEMES = ("sqlite",)
POSTGRESQL_SCHEMES = ("postgresql", "postgresql+psycopg")
DATABASE_SCHEMES = SQLITE_SCHEMES + POSTGRESQL_SCHEMES

SUPPORTED = (
    *DELIMITED_SUFFIXES,
    *PARQUET_SUFFIXES,
    "file://",
    *(f"{scheme}://" for scheme in DATABASE_SCHEMES),
)

# scheme://user:password@ -> scheme://user:***@ ; greedy up to the last '@'
# of the authority so that an unencoded '@' in a password is hidden too.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^/?#\s]*)@")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


class SourceError(Exception):
    """Why a source cannot be read; :func:`connectors.load` adds who and what.

    Parameters
    ----------
    reason : str
        One clause, e.g. ``"file not found: /data/bank.csv"``.
    secrets : tuple of str
        Values (passwords) to hide wherever the message might repeat them.
    """

    def __init__(self, reason: str, *, secrets: tuple[str, ...] = (), transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient
        self.reason = reason
        self.secrets = secrets


@dataclass(frozen=True)
class Location:
    """A file source, resolved.

    Attributes
    ----------
    kind : {"delimited", "parquet"}
    suffix : str
        The matched suffix, lower case (``".csv.gz"``).
    path : str
        Absolute local path, or the path inside ``filesystem``.
    filesystem : pyarrow.fs.FileSystem or None
        None for local files, read with plain file APIs.
    """

    kind: str
    suffix: str
    path: str
    filesystem: Any = None


def scheme_of(source: str) -> str | None:
    """The URI scheme in lower case, or None for a plain path (``C:\\x`` included)."""
    match = _SCHEME.match(source)
    if match is None or len(match["scheme"]) == 1:
        return None
    return match["scheme"].lower()


def file_suffix(path: str) -> tuple[str, str] | None:
    """``(kind, suffix)`` of a file path, or None when no suffix is supported."""
    name = path.rstrip("/").lower()
    for suffix in sorted(DELIMITED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return "delimited", suffix
    for suffix in PARQUET_SUFFIXES:
        if name.endswith(suffix):
            return "parquet", suffix
    return None


def locate(source: str, *, base_dir: str | os.PathLike[str] | None = None, filesystem: Any = None) -> Location:
    """Classify a file source and resolve where it lives.

    Parameters
    ----------
    source : str
        Local path (relative paths resolve against ``base_dir``, else the
        working directory), ``file://`` URI, any other pyarrow filesystem URI,
        or, when ``filesystem`` is given, a path inside that filesystem.
    base_dir : path, optional
        Folder of the config file that named the source.
    filesystem : pyarrow.fs.FileSystem, optional
        Read ``source`` from this filesystem instead of resolving it.

    Raises
    ------
    SourceError
        Unsupported suffix or scheme, or a URI pyarrow does not understand.
    """
    scheme = scheme_of(source)
    found = file_suffix(source.split("?", 1)[0] if scheme else source)
    if found is None:
        folder = _folder(source, scheme, base_dir=base_dir, filesystem=filesystem)
        if folder is None:
            raise SourceError(unsupported(source))
        return folder
    kind, suffix = found

    if filesystem is not None:
        if scheme is not None:
            raise SourceError("read option 'filesystem' takes a path inside that filesystem, not a URI")
        return Location(kind, suffix, source, filesystem)

    if scheme is None:
        path = Path(source).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir).expanduser() / path
        return Location(kind, suffix, str(path.absolute()), None)

    if scheme == "file":
        rest = source[len("file://") :]
        if not rest.startswith("/"):
            raise SourceError("a file:// URI needs an absolute path: file:///abs/path")
        return Location(kind, suffix, unquote(rest.split("?", 1)[0]), None)

    fs, path = filesystem_of(source, scheme)
    return Location(kind, suffix, path, fs)


def filesystem_of(source: str, scheme: str | None) -> tuple[Any, str]:
    """``(filesystem, path)`` of a URI: pyarrow's own filesystems first, then any fsspec protocol.

    An fsspec filesystem (``memory://``, ``abfs://``, ``gcs://`` with its
    package installed, ...) is wrapped as a pyarrow filesystem.
    """
    try:
        return pyarrow.fs.FileSystem.from_uri(source)
    except (ValueError, TypeError, NotImplementedError, OSError) as exc:
        import fsspec.core

        try:
            fs, path = fsspec.core.url_to_fs(source.split("?", 1)[0])
        except (ValueError, ImportError, OSError):
            raise SourceError(
                f"unsupported scheme '{scheme}' ({one_line(exc)}); "
                f"supported: {', '.join(SUPPORTED)}, a pyarrow or an fsspec filesystem URI"
            ) from exc
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def _folder(source: str, scheme: str | None, *, base_dir: Any, filesystem: Any) -> Location | None:
    """A folder without a suffix is a Parquet dataset (hive partitioning); None when ``source`` is no folder."""
    if scheme in (None, "file") and filesystem is None:
        rest = source[len("file://") :] if scheme == "file" else source
        path = Path(unquote(rest) if scheme == "file" else rest).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir).expanduser() / path
        return Location("parquet", "", str(path.absolute()), None) if path.is_dir() else None
    try:
        fs, path = (filesystem, source) if filesystem is not None else filesystem_of(source, scheme)
        is_dir = fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
    except (SourceError, ValueError, TypeError, NotImplementedError, OSError):
        return None
    return Location("parquet", "", path, fs) if is_dir else None


def unsupported(source: str) -> str:
    """The reason for a source no reader claims, naming its suffix or scheme."""
    scheme = scheme_of(source)
    path = source.split("?", 1)[0]
    suffix = PurePosixPath(path.replace("\\", "/")).suffix.lower()
    if scheme is not None and not suffix:
        what = f"unsupported scheme '{scheme}://'"
    else:
        what = f"unsupported suffix '{suffix}'" if suffix else "no file suffix"
    return f"{what}; supported: {', '.join(SUPPORTED)}"


def mask(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` with every URI password and every listed secret replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def one_line(value: object) -> str:
    """An exception or text folded onto one line (drivers write paragraphs)."""
    return " ".join(str(value).split())


def column_list(value: object) -> list[str]:
    """The ``columns`` read option as a list of names; a bare string is refused."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SourceError(f"read option 'columns' must be a list of names, got {value!r}")
    return [str(name) for name in value]
