"""SQL sources: SQLite files and PostgreSQL databases, read through SQLAlchemy.

URI forms (the connector's own parameters are ``table``, ``query`` and
``schema``; exactly one of ``table`` and ``query`` is required)::

    sqlite:///relative/file.db?table=t       relative to base_dir
    sqlite:////abs/file.db?query=SELECT ...
    postgresql://user:pass@host:port/db?table=t&schema=s
    postgresql+psycopg://...                 same; postgresql:// is rewritten to it

Other PostgreSQL parameters (``sslmode``, ``connect_timeout``, ...) go to libpq.
Parameter values are percent-decoded, but ``+`` stays a plus: write ``%26``
for ``&``, ``%25`` for ``%`` and ``%23`` for ``#`` inside a query.

A table is read as ``SELECT * FROM <schema>.<table>`` with both names quoted
by the dialect, after checking the table exists, so ``?table=`` cannot inject
SQL. SQLite files are opened read-only and never created.
"""

from __future__ import annotations

import inspect
import itertools
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas
import sqlalchemy as sa
from psycopg import ProgrammingError
from psycopg.conninfo import make_conninfo
from sqlalchemy.pool import NullPool

from fedmine.connectors.source import (
    POSTGRESQL_SCHEMES,
    SQLITE_SCHEMES,
    SourceError,
    column_list,
    one_line,
)

OWN_PARAMETERS = ("table", "query", "schema")
#: Read option naming a unique numeric column: rows are read ordered by it, and in partitions split by its ranges.
PARTITION_KEY = "partition_key"
DEFAULT_CONNECT_TIMEOUT = 10  # seconds; an unreachable host must not hang a run
# pandas.read_sql keywords that do not fit a one-frame read.
_EXCLUDED_OPTIONS = ("sql", "con", "chunksize", "columns")
READ_OPTIONS = (
    "columns",  # ?table= only: read these columns, quoted like the table
    PARTITION_KEY,  # rows ordered by this unique column (and split by its ranges on a cluster)
    *(name for name in inspect.signature(pandas.read_sql).parameters if name not in _EXCLUDED_OPTIONS),
)


@dataclass(frozen=True)
class DatabaseSource:
    """A parsed database URI.

    Attributes
    ----------
    dialect : {"sqlite", "postgresql"}
    table, query, schema : str or None
        The connector's own parameters, decoded.
    path : str or None
        SQLite only: the resolved database file.
    url : sqlalchemy.engine.URL or None
        PostgreSQL only: the driver URL (``postgresql+psycopg``), libpq
        parameters included.
    secrets : tuple of str
        The password, to be masked in every message.
    """

    dialect: str
    table: str | None
    query: str | None
    schema: str | None
    path: str | None = None
    url: Any = None
    secrets: tuple[str, ...] = field(default=())

    @property
    def address(self) -> str:
        """``host:port`` of a server, or the SQLite file path."""
        if self.dialect == "sqlite":
            return str(self.path)
        return f"{self.url.host or 'localhost'}:{self.url.port or 5432}"


def parse(source: str, *, base_dir: str | os.PathLike[str] | None = None) -> DatabaseSource:
    """Split a database URI into where to connect and what to read.

    Raises
    ------
    SourceError
        Neither or both of table/query, an unknown parameter, a malformed URI.
    """
    scheme, rest = source.split("://", 1)
    scheme = scheme.lower()
    location, _, query_string = rest.partition("?")
    params = _parse_query_string(query_string)
    own = {name: params.pop(name) for name in OWN_PARAMETERS if name in params}
    table, query, schema = (own.get(name) for name in OWN_PARAMETERS)

    if scheme in SQLITE_SCHEMES:
        path = _sqlite_path(location, base_dir)
        if params:
            raise SourceError(f"unknown parameter '{next(iter(params))}'; allowed: {', '.join(OWN_PARAMETERS)}")
        parsed = DatabaseSource("sqlite", table, query, schema, path=path)
    elif scheme in POSTGRESQL_SCHEMES:
        url, secrets = _postgresql_url(location, params)
        parsed = DatabaseSource("postgresql", table, query, schema, url=url, secrets=secrets)
    else:  # pragma: no cover - the caller dispatches on these schemes only
        raise SourceError(f"unsupported database scheme '{scheme}://'")

    if (table is None) == (query is None):
        given = "both ?table= and ?query=" if table is not None else "no ?table= or ?query="
        raise SourceError(
            f"{given}; a database source needs exactly one, e.g. ?table=customers or ?query=SELECT ...",
            secrets=parsed.secrets,
        )
    if not (table or query):
        raise SourceError("?table= or ?query= is empty", secrets=parsed.secrets)
    return parsed


def read_database(source: DatabaseSource, options: dict[str, Any] | None = None) -> pandas.DataFrame:
    """Read the table or the query result of a parsed database source.

    Parameters
    ----------
    source : DatabaseSource
    options : dict, optional
        ``columns`` (a list of names, with ``?table=`` only) and keywords for
        :func:`pandas.read_sql` (``parse_dates``, ``dtype``, ``params``,
        ``coerce_float``, ``index_col``, ``dtype_backend``).

    Returns
    -------
    frame : pandas.DataFrame
        Columns named as in the database; empty when the table is.
    """
    options = dict(options or {})
    _check_options(options)
    columns = options.pop("columns", None)
    if columns is not None:
        columns = column_list(columns)
    if columns is not None and source.table is None:
        raise SourceError("read option 'columns' applies to ?table= only; select them in the query")
    key = options.pop(PARTITION_KEY, None)
    with _connected(source) as connection:
        statement, _ = _rows(connection, source, columns, key)
        return _read(statement, connection, source, options)


def _connected(source: DatabaseSource):
    """A connection that disposes of its engine when closed; an unreachable database is a transient SourceError."""
    from contextlib import contextmanager

    @contextmanager
    def connected():
        engine = _engine(source)
        try:
            try:
                connection = engine.connect()
            except sa.exc.DBAPIError as exc:
                raise SourceError(
                    f"cannot connect to {source.address}: {_driver_message(exc)}",
                    secrets=source.secrets,
                    transient=True,
                ) from exc
            with connection:
                yield connection
        finally:
            engine.dispose()

    return connected()


def _rows(connection, source: DatabaseSource, columns: list[str] | None, key: Any = None):
    """SELECT of the table (its columns) or the query, ordered by ``key`` if given (and its key column)."""
    if key is None and source.table is None:
        return sa.text(source.query), None
    k = None if key is None else _key(key)
    everything = [sa.literal_column("*")]
    if source.table is not None:
        _check_table(connection, source)
        selected = [sa.column(name) for name in columns] if columns is not None else everything
        statement = sa.select(*selected).select_from(sa.table(source.table, schema=source.schema))
    else:
        statement = sa.select(*everything).select_from(sa.text(f"({source.query}) AS fedmine_rows"))
    return (statement if k is None else statement.order_by(k)), k


def _key(key: Any):
    if not isinstance(key, str) or not key:
        raise SourceError(f"read option '{PARTITION_KEY}' must be a column name, got {key!r}")
    return sa.column(key)


def _read(statement, connection, source: DatabaseSource, options: dict[str, Any]):
    what = f"table '{source.table}'" if source.table else "query"
    try:
        return pandas.read_sql(statement, connection, **options)
    except (sa.exc.DBAPIError, pandas.errors.DatabaseError) as exc:
        # pandas wraps the driver's error; its cause holds the driver's words.
        cause = exc.__cause__ if isinstance(exc.__cause__, sa.exc.DBAPIError) else exc
        raise SourceError(f"reading {what} failed: {_driver_message(cause)}", secrets=source.secrets) from exc
    except (TypeError, ValueError) as exc:
        raise SourceError(f"bad read options: {one_line(exc)}") from exc


def plan_ranges(text: str, source: DatabaseSource, options: dict[str, Any], *, rows: int, n: int | None) -> list:
    """A SQL source as partitions by ranges of its ``partition_key`` (a unique numeric column).

    The key's range ``[min, max]`` is cut into ``n`` equal ranges (default:
    enough for about ``rows`` rows each); each is counted, and read ordered by
    the key (:func:`read_range`). Ranges without rows are left out.
    """
    from fedmine.connectors.partitioned import Partition

    options = dict(options)
    _check_options(options)
    key = options.pop(PARTITION_KEY, None)
    if key is None:
        raise SourceError(
            f"a SQL source is read in partitions by ranges of a key: set read option {PARTITION_KEY} "
            f"(a unique numeric column, e.g. {PARTITION_KEY}: customer_id)"
        )
    columns = options.get("columns")
    if columns is not None and source.table is None:
        raise SourceError("read option 'columns' applies to ?table= only; select them in the query")
    with _connected(source) as connection:
        ordered, k = _rows(connection, source, None if columns is None else column_list(columns), key)
        table = ordered.order_by(None).subquery("fedmine_range")
        k = table.c[key] if key in table.c else sa.literal_column(sa.column(key).name)
        try:
            low, high, count, distinct = connection.execute(
                sa.select(sa.func.min(k), sa.func.max(k), sa.func.count(), sa.func.count(sa.distinct(k))).select_from(
                    table
                )
            ).one()
        except sa.exc.DBAPIError as exc:
            raise SourceError(f"{PARTITION_KEY} {key}: {_driver_message(exc)}", secrets=source.secrets) from exc
        if count and distinct != count:
            raise SourceError(
                f"{PARTITION_KEY} {key} must be unique and never NULL (it orders the rows): "
                f"{count - distinct} of {count} rows repeat a value or have none"
            )
        if not count:
            return []
        if isinstance(low, bool) or not isinstance(low, (int, float)):
            raise SourceError(f"{PARTITION_KEY} {key} must be a numeric column; its smallest value is {low!r}")
        n_ranges = max(1, int(n) if n else -(-int(count) // max(int(rows), 1)))
        step = (high - low) / n_ranges
        cuts = [low + step * i for i in range(1, n_ranges)]
        if isinstance(low, int):
            cuts = sorted({int(c) for c in cuts if low < int(c) <= high})
        bounds = [low, *cuts, None]
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            where = k >= lo if hi is None else sa.and_(k >= lo, k < hi)
            counted = connection.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()
            if counted:
                label = f"{key} >= {lo}" if hi is None else f"{lo} <= {key} < {hi}"
                parts.append(
                    Partition(
                        index=len(parts), rows=int(counted), label=label, kind="sql", path=text, key=key,
                        low=lo, high=hi, options=dict(options), schema=source,
                    )
                )  # fmt: skip
        return parts


def read_range(part: Any):
    """One key range of a SQL source, ordered by the key, in chunks of rows (frames)."""
    from fedmine.connectors.partitioned import BATCH_ROWS

    source: DatabaseSource = part.schema
    options = dict(part.options)
    columns = options.pop("columns", None)
    with _connected(source) as connection:
        ordered, k = _rows(connection, source, None if columns is None else column_list(columns), part.key)
        where = k >= part.low if part.high is None else sa.and_(k >= part.low, k < part.high)
        statement = ordered.where(where)
        chunks = _read(statement, connection, source, dict(options, chunksize=BATCH_ROWS))
        try:
            yield from chunks
        except (sa.exc.DBAPIError, pandas.errors.DatabaseError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, sa.exc.DBAPIError) else exc
            raise SourceError(f"reading {part.label} failed: {_driver_message(cause)}", secrets=source.secrets) from exc


def _parse_query_string(query_string: str) -> dict[str, str]:
    """``a=1&b=x%20y`` -> ``{"a": "1", "b": "x y"}``; unlike urllib, ``+`` stays ``+``."""
    params: dict[str, str] = {}
    for part in filter(None, query_string.split("&")):
        name, _, value = part.partition("=")
        params[unquote(name).strip().lower()] = unquote(value)
    return params


def _sqlite_path(location: str, base_dir: str | os.PathLike[str] | None) -> str:
    if not location.startswith("/") or location == "/":
        raise SourceError(
            "a SQLite URI names a file and no host: sqlite:///relative/file.db or sqlite:////absolute/file.db"
        )
    path = Path(unquote(location[1:])).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir).expanduser() / path
    return str(path.absolute())


def _postgresql_url(location: str, params: dict[str, str]) -> tuple[Any, tuple[str, ...]]:
    secrets: tuple[str, ...] = ()
    if "@" in location:
        # The password is everything between the first ':' and the last '@',
        # so that it is masked even when its special characters are not encoded.
        userinfo = location.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        secrets = tuple(sorted({password, unquote(password)} - {""}, key=len, reverse=True))
        if "@" in userinfo or "/" in userinfo:
            raise SourceError(
                "percent-encode '@' and '/' in the user name and password (%40, %2F)",
                secrets=secrets,
            )
    try:
        url = sa.engine.make_url(f"postgresql+psycopg://{location}")
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise SourceError(f"malformed PostgreSQL URI: {one_line(exc)}", secrets=secrets) from exc
    if not url.database:
        raise SourceError("no database name: postgresql://user@host:port/database?table=t", secrets=secrets)
    try:
        make_conninfo("", **params)
    except ProgrammingError as exc:
        raise SourceError(
            f"{one_line(exc)}; allowed: {', '.join(OWN_PARAMETERS)} and libpq connection parameters",
            secrets=secrets,
        ) from exc
    return url.set(query=params), secrets


def _engine(source: DatabaseSource):
    if source.dialect == "sqlite":
        path = source.path
        if os.path.isdir(path):
            raise SourceError(f"is a folder, not a SQLite file: {path}")
        if not os.path.exists(path):
            raise SourceError(f"file not found: {path}")
        uri = f"file:{quote(path)}?mode=ro"
        return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=NullPool)
    connect_args = {}
    if "connect_timeout" not in source.url.query:
        connect_args["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    return sa.create_engine(source.url, poolclass=NullPool, connect_args=connect_args)


def _check_table(connection, source: DatabaseSource) -> None:
    """Raise naming the table and listing those that exist when it is missing."""
    try:
        inspector = sa.inspect(connection)
        if inspector.has_table(source.table, schema=source.schema):
            return
        names = sorted(
            {*inspector.get_table_names(schema=source.schema),
             *inspector.get_view_names(schema=source.schema)}
        )  # fmt: skip
    except sa.exc.DBAPIError as exc:
        raise SourceError(f"cannot list tables: {_driver_message(exc)}", secrets=source.secrets) from exc
    where = f" in schema '{source.schema}'" if source.schema else ""
    existing = ", ".join(names) if names else "none"
    raise SourceError(f"table '{source.table}' not found{where}; tables: {existing}", secrets=source.secrets)


def _check_options(options: dict[str, Any]) -> None:
    for name in options:
        if name not in READ_OPTIONS:
            raise SourceError(f"unknown read option '{name}' for a database; allowed: {', '.join(READ_OPTIONS)}")


def _driver_message(exc: Exception) -> str:
    """The driver's first line, without SQLAlchemy's SQL echo and links."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return one_line(lines[0]) if lines else type(original).__name__
