"""``bqapi``'s names for the table workflow, downloaded with aiobisque.

A script written for the official client switches by changing one import::

    from bqapi.comm import BQSession           # before
    from aiobisque.compat import BQSession     # after

    bq = BQSession().init_local(user, pwd, bisque_root=root)
    ms = bq.service("table").load_array(uniq, "DataContainers/ImageDataContainer/CellData/Phases")
    bq.close()

What is the same as ``bqapi``:

- ``init_local`` returns the session, or ``None`` (with an error logged) when the server
  rejects the user name or password: ``bqapi`` does not raise there, and scripts test for
  ``None``. Pass ``BQSession(raise_on_login_failure=True)`` to get an
  :class:`~aiobisque.AuthenticationError` instead.
- ``service(name)`` returns ``None`` for a service the server does not list;
  ``service_map``, ``bisque_root``, ``mex`` and ``close()`` exist.
- ``load_array(table_uniq, path, slices=[])`` returns the same array: a ``slice`` selects a
  range, an ``int`` keeps a length-1 dimension, missing dimensions are whole.
- ``store_array(array, name)`` uploads ``NAME.h5`` and returns the new resource's element.
- Errors are catchable as :class:`BQCommError`. Each is also the aiobisque error it came
  from (``except NotFoundError`` works too) and keeps it as ``__cause__``.

What differs, on purpose:

- Downloads are chunked, concurrent and retried; negative indices and slice steps work
  (``bqapi`` rejects the former and drops the latter). ``BQSession(**options)`` and
  ``load_array(..., **options)`` take :class:`~aiobisque.Config` fields.
- Only the table service has a proxy: ``service()`` of another listed service raises
  :class:`BQApiError` (use ``bqapi`` itself for those).
- ``create_mex=True`` is accepted and ignored (no module execution is created, ``mex``
  stays ``None``); ``init_mex`` authenticates with the token but does not load the mex
  document. CAS logins are not supported.
- ``BQCommError`` here is this module's class, not ``bqapi.exception.BQCommError``.
- ``close()`` really closes the connections (``bqapi``'s does nothing), so the session
  cannot be used afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from aiobisque.config import Config
from aiobisque.errors import AuthenticationError, BisqueError, ServerError, UsageError
from aiobisque.protocol import TEXT_COLUMN, ArrayInfo
from aiobisque.session import Auth, MexToken
from aiobisque.sync import Session

__all__ = ["BQApiError", "BQCommError", "BQException", "BQSession", "CommResponse", "TableProxy"]

log = logging.getLogger("aiobisque.compat")


class BQException(Exception):
    """Base class of the errors of this module (``bqapi``'s ``BQException``)."""


class BQApiError(BQException):
    """The API was used in a way this layer does not support (``bqapi``'s ``BQApiError``)."""


@dataclass(frozen=True)
class CommResponse:
    """What ``BQCommError.response`` offers of ``bqapi``'s ``requests`` response."""

    url: str | None
    status_code: int | None
    content: bytes = b""


class BQCommError(BQException):
    """A request to BisQue failed (``bqapi``'s ``BQCommError``).

    Raised errors are subclasses that are also the aiobisque error behind them (e.g.
    :class:`~aiobisque.NotFoundError`), with that error as ``__cause__``.
    """

    url: str | None = None
    status: int | None = None

    @property
    def response(self) -> CommResponse:
        """The failing request's URL (without credentials) and status, as in ``bqapi``."""
        return CommResponse(self.url, self.status)


_COMM_ERROR_CLASSES: dict[type[BisqueError], type[BQCommError]] = {}


def _comm_error_class(cls: type[BisqueError]) -> type[BQCommError]:
    # one class per aiobisque error type, so both families of except clauses match
    wrapped = _COMM_ERROR_CLASSES.get(cls)
    if wrapped is None:
        wrapped = type(cls.__name__, (cls, BQCommError),
                       {"__module__": __name__, "__doc__": cls.__doc__,
                        "__reduce__": _reduce_comm_error})
        wrapped = _COMM_ERROR_CLASSES.setdefault(cls, wrapped)
    return wrapped


def _as_comm_error(exc: BisqueError) -> BQCommError:
    return _rebuild_comm_error(type(exc), exc.message, exc.__dict__)


def _rebuild_comm_error(
    base: type[BisqueError], message: str, state: dict[str, Any]
) -> BQCommError:
    cls = _comm_error_class(base)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


def _reduce_comm_error(self: Any) -> tuple[Any, ...]:
    # the classes are made at run time, so pickle the aiobisque base class instead
    base = next(c for c in type(self).__mro__[1:] if issubclass(c, BisqueError))
    return (_rebuild_comm_error, (base, self.message, dict(self.__dict__)))


@contextlib.contextmanager
def _bqapi_errors() -> Iterator[None]:
    """Re-raise aiobisque errors as :class:`BQCommError` subclasses (original as cause)."""
    try:
        yield
    except BisqueError as exc:
        if isinstance(exc, BQCommError):
            raise
        raise _as_comm_error(exc) from exc


def _table_as_matrix(session: Session, info: ArrayInfo, slices: list[Any],
                     options: dict[str, Any]) -> np.ndarray[Any, Any]:
    """A table as ``bqapi`` reads it from BisQue: rows x columns of one common type."""
    text = [n for n, t in info.columns.items() if t == TEXT_COLUMN]
    if text:
        raise ServerError(
            f"{info.uniq}/{info.path} is a table with text columns ({', '.join(text)}), "
            "which BisQue cannot send as one array (it answers 500, and so does bqapi's "
            "load_array); read it with aiobisque.Session.load_table", status=500)
    rows = slices[0] if slices else None
    if isinstance(rows, int):
        rows = slice(rows, rows + 1)  # bqapi keeps a length-1 dimension
    columns = slices[1] if len(slices) > 1 else slice(None)
    names = list(info.headers)[columns] if isinstance(columns, slice) \
        else [info.headers[columns]]
    records = session.load_table(info.uniq, info.path, rows, names, **options)
    common = np.result_type(*(records.dtype[n] for n in names))
    return np.column_stack([records[n].astype(common) for n in names]) if len(records) \
        else np.empty((0, len(names)), dtype=common)


class TableProxy:
    """``bq.service("table")``: ``bqapi``'s ``TableProxy`` for reading arrays."""

    def __init__(self, session: BQSession):
        self.session = session

    def __repr__(self) -> str:
        return f"<TableProxy of {self.session!r}>"

    def load_array(
        self,
        table_uniq: str,
        path: str,
        slices: Sequence[slice | int] = (),
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """Load an array (or the part ``slices`` selects) as ``bqapi`` does, with aiobisque.

        ``table_uniq`` is a uniq or a resource URL; each entry of ``slices`` is a ``slice``
        or an ``int`` (which keeps a length-1 dimension); dimensions not given are whole.
        Runs :meth:`aiobisque.Session.load_array`; ``options`` are Config fields.

        A table node comes back as ``bqapi`` gets it from a real server: a numeric table as
        a 2-D array of the columns' common type (BisQue's ``DataFrame.values``), a table
        with a text column as an error (BisQue answers 500). ``Session.load_table`` reads
        tables with their exact column types instead.
        """
        with _bqapi_errors():
            session = self.session._connected()
            try:
                return session.load_array(table_uniq, path, list(slices), **options)
            except UsageError:
                info = session.info(table_uniq, path, **options)
                if info.kind != "table":
                    raise
                return _table_as_matrix(session, info, list(slices), options)

    def store_array(self, array: np.ndarray[Any, Any], name: str, **options: Any) -> Any:
        """Store ``array`` as a new resource ``NAME.h5`` and return its element, as ``bqapi``.

        Like ``bqapi``: the file holds node ``/NAME`` and the result is the first child of
        BisQue's ``<resource type="uploaded">`` answer (an ``xml.etree`` element here, so
        ``.get("resource_uniq")``, ``.get("uri")`` and ``.tag`` work alike). Unlike it:
        the upload is streamed, retried only when the server provably did not take it,
        tagged with an ``upload_id``, and bad input fails before anything is sent. Runs
        :meth:`aiobisque.TableService.store_array`; ``options`` are Config fields.
        """
        with _bqapi_errors():
            return self.session._connected().table.store_array(array, name, **options).element


class BQSession:
    """``bqapi``'s ``BQSession`` for the table workflow (see the module docstring).

    ``raise_on_login_failure=True`` makes a rejected login raise instead of returning
    ``None``; ``options`` are :class:`~aiobisque.Config` fields for every download.
    """

    def __init__(self, *, raise_on_login_failure: bool = False, **options: Any):
        Config().replace(**options)  # reject unknown or invalid options now
        self._options = options
        self._raise_on_login_failure = raise_on_login_failure
        self._session: Session | None = None
        self.bisque_root: str | None = None
        self.service_map: dict[str, str] = {}
        self.mex: Any = None

    def __repr__(self) -> str:
        return f"<compat.BQSession of {self._session!r}>"

    def init(
        self,
        bisque_url: str,
        credentials: tuple[str, str] | None = None,
        moduleuri: str | None = None,
        create_mex: bool = False,
    ) -> BQSession | None:
        """Connect to ``bisque_url`` anonymously, with ``(user, password)`` or ``("mex", token)``."""
        if credentials and credentials[0].lower() == "mex":
            return self.init_mex(bisque_url, credentials[1])
        if credentials:
            return self.init_local(credentials[0], credentials[1], moduleuri=moduleuri,
                                   bisque_root=bisque_url, create_mex=create_mex)
        return self._connect(bisque_url, None)

    def init_local(
        self,
        user: str,
        pwd: str,
        moduleuri: str | None = None,
        bisque_root: str | None = None,
        create_mex: bool = False,
    ) -> BQSession | None:
        """Log in with a user name and password; ``None`` when the server rejects them.

        ``moduleuri`` and ``create_mex`` are accepted for compatibility and ignored.
        """
        return self._connect(bisque_root or self.bisque_root, (user, pwd))

    def init_cas(self, user: str, pwd: str, moduleuri: str | None = None,
                 bisque_root: str | None = None, create_mex: bool = False) -> BQSession | None:
        """Not supported: CAS form logins are not implemented by aiobisque (raises)."""
        raise BQApiError(
            "CAS logins are not supported by aiobisque.compat; use init_local (if the server "
            "accepts HTTP Basic logins) or init_mex with a module token, or bqapi itself"
        )

    def init_session(self, user: str, pwd: str, moduleuri: str | None = None,
                     bisque_root: str | None = None, create_mex: bool = False
                     ) -> BQSession | None:
        """Log in the way the server asks (``bqapi``'s provider choice); CAS raises."""
        if not bisque_root:
            raise BQApiError("bisque_root is required (e.g. bisque_root='https://host')")
        with _bqapi_errors():
            anonymous = Session(bisque_root, None, **self._options)
            try:
                providers = anonymous.login_providers()
            finally:
                anonymous.close()
        if "cas" in providers:
            return self.init_cas(user, pwd, moduleuri, bisque_root, create_mex)
        return self.init_local(user, pwd, moduleuri, bisque_root, create_mex)

    def init_mex(
        self,
        mex_url: str,
        token: str,
        user: str | None = None,
        bisque_root: str | None = None,
    ) -> BQSession:
        """Authenticate with a module-execution token (``Authorization: Mex ...``).

        As in ``bqapi`` the root defaults to ``mex_url``'s scheme and host. A rejected
        token raises (``bqapi`` fails there too, when it loads the mex).
        """
        if bisque_root is None:
            parts = urlsplit(mex_url)
            bisque_root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        session = self._connect(bisque_root, MexToken(token, user), login_may_fail=False)
        assert session is not None
        return session

    def _connect(
        self, root: str | None, auth: Auth, *, login_may_fail: bool = True
    ) -> BQSession | None:
        if not root:
            raise BQApiError("bisque_root is required (e.g. bisque_root='https://host')")
        self.close()
        self.bisque_root = root
        try:
            with _bqapi_errors():
                self._session = Session(root, auth, **self._options)
        except AuthenticationError as exc:
            if self._raise_on_login_failure or not login_may_fail:
                raise
            log.error("%s; init_local returns None (as bqapi does)", exc)
            return None
        self.service_map = dict(self._session.services)
        return self

    def _connected(self) -> Session:
        if self._session is None:
            raise BQApiError("the session is not initialised or was closed: call init_local()")
        return self._session

    def service(self, service_name: str) -> TableProxy | None:
        """The proxy of a service listed by the server, ``None`` for an unlisted one."""
        if service_name not in self.service_map:
            return None
        if service_name in ("table", "tables"):
            return TableProxy(self)
        raise BQApiError(
            f"aiobisque.compat provides only the table service, not {service_name!r}; "
            "use bqapi for it"
        )

    def close(self) -> None:
        """Close the connections (``bqapi``'s ``close()`` does nothing; calling it is safe)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()
