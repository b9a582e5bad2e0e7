"""Delimited text sources: ``.csv``, ``.csv.gz``, ``.tsv``, ``.txt``, read by pandas.

Read options are :func:`pandas.read_csv` keywords, passed unchanged (``sep``,
``na_values``, ``decimal``, ``encoding``, ``usecols``, ``dtype``, ...). A ``.tsv``
file is tab-separated unless ``sep`` says otherwise; the others default to
commas. Compression follows the file name (``.gz``), locally and on pyarrow
filesystems alike.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from typing import Any

import pandas
import pyarrow.fs

from fedmine.connectors.source import DELIMITED_SUFFIXES, Location, SourceError, one_line

READ_OPTIONS = tuple(name for name in inspect.signature(pandas.read_csv).parameters if name != "filepath_or_buffer")
_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(?P<name>[^']+)'")


def read_delimited(location: Location, options: dict[str, Any] | None = None) -> pandas.DataFrame:
    """Read a delimited file into a frame with its header's column names.

    Parameters
    ----------
    location : Location
        ``kind == "delimited"``; local or on a pyarrow filesystem.
    options : dict, optional
        :func:`pandas.read_csv` keywords.

    Raises
    ------
    SourceError
        Missing file, unknown read option, unparsable or undecodable text.
    """
    options = dict(options or {})
    for name in options:
        if name not in READ_OPTIONS:
            raise SourceError(_unknown_option(name))
    if "sep" not in options and "delimiter" not in options:
        options["sep"] = DELIMITED_SUFFIXES[location.suffix]

    try:
        if location.filesystem is None:
            _check_local_file(location.path)
            return pandas.read_csv(location.path, **options)
        _check_remote_file(location)
        # compression="detect" (the default) decompresses by the path's suffix.
        with location.filesystem.open_input_stream(location.path) as stream:
            return pandas.read_csv(stream, **options)
    except SourceError:
        raise
    except TypeError as exc:
        match = _UNEXPECTED_KEYWORD.search(str(exc))
        if match:
            raise SourceError(_unknown_option(match["name"])) from exc
        raise SourceError(f"bad read options: {one_line(exc)}") from exc
    except pandas.errors.EmptyDataError as exc:
        raise SourceError(f"file is empty: {location.path}") from exc
    except pandas.errors.ParserError as exc:
        raise SourceError(f"cannot parse as delimited text: {one_line(exc)}") from exc
    except UnicodeDecodeError as exc:
        encoding = options.get("encoding", "utf-8")
        raise SourceError(
            f"not valid {encoding} text ({exc.reason} at byte {exc.start}); set read option 'encoding', e.g. latin-1"
        ) from exc
    except FileNotFoundError as exc:
        raise SourceError(f"file not found: {location.path}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read {location.path}: {one_line(exc)}") from exc
    except ValueError as exc:
        raise SourceError(f"bad read options: {one_line(exc)}") from exc


def _unknown_option(name: str) -> str:
    close = difflib.get_close_matches(name, READ_OPTIONS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown read option '{name}' for delimited text (pandas.read_csv keywords){hint}"


def _check_local_file(path: str) -> None:
    if os.path.isdir(path):
        raise SourceError(f"is a folder, not a file: {path}")
    if not os.path.exists(path):
        raise SourceError(f"file not found: {path}")


def _check_remote_file(location: Location) -> None:
    info = location.filesystem.get_file_info(location.path)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise SourceError(f"file not found: {location.path}")
    if info.type == pyarrow.fs.FileType.Directory:
        raise SourceError(f"is a folder, not a file: {location.path}")
