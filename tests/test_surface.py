"""The public surface: what ``aiobisque`` exports, and sync twins that match the async API."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest

import aiobisque
from aiobisque import errors
from aiobisque.sync import Session, SyncRemoteArray, SyncTableService

#: (sync twin, async original)
TWINS = [
    (SyncRemoteArray, aiobisque.RemoteArray),
    (SyncTableService, aiobisque.TableService),
    (Session, aiobisque.BisqueSession),
]

#: async members with no sync twin, and why
NO_TWIN = {
    (aiobisque.RemoteArray, "fill"): "takes a normalised Selection: aiobisque's own callers",
    (aiobisque.RemoteArray, "url_for"): "a URL builder for one planned request",
    (aiobisque.RemoteArray, "check_readable"): "a precondition of fill, for its callers",
    (aiobisque.BisqueSession, "open"): "the sync Session connects on creation",
    (aiobisque.BisqueSession, "get_document"): "the transport's document fetch",
    (aiobisque.BisqueSession, "transport"): "the connection pool itself",
    (aiobisque.BisqueSession, "executor"): "the decoding threads",
}
#: sync members with no async original, and why
SYNC_ONLY = {
    (Session, "open"): "opens an array (table.open): the async open() connects instead",
}


def public(cls: type) -> dict[str, object]:
    return {name: member for name, member in vars(cls).items() if not name.startswith("_")}


def instance_members(cls: type) -> set[str]:
    """Public names of an instance of ``cls`` (attributes set in ``__init__`` included)."""
    info = aiobisque.ArrayInfo("u", "a", "matrix", (2,), np.dtype("f4"))
    session = aiobisque.BisqueSession("http://127.0.0.1:9")  # not opened: no I/O
    examples = {
        aiobisque.BisqueSession: session,
        aiobisque.TableService: aiobisque.TableService(session, "http://127.0.0.1:9/table/"),
        aiobisque.RemoteArray: aiobisque.RemoteArray(
            aiobisque.TableService(session, "http://127.0.0.1:9/table/"), info),
    }
    return {name for name in dir(examples[cls]) if not name.startswith("_")}


def params(fn: object) -> list[inspect.Parameter]:
    """A callable's parameters (results differ by design: a twin returns sync objects)."""
    return list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]


def test_exported_members_are_what_the_package_defines() -> None:
    exported = set(aiobisque.__all__)
    defined = {
        name for name, value in vars(aiobisque).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert aiobisque.__all__ == sorted(aiobisque.__all__)
    assert exported - {"__version__"} == defined
    for name in exported:
        assert hasattr(aiobisque, name), name


def test_every_error_of_the_tree_is_exported() -> None:
    assert set(errors.__all__) <= set(aiobisque.__all__)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, aiobisque.BisqueError)
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree drawing"


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_sync_twins_match_the_async_api(sync: type, aio: type) -> None:
    for name, member in public(aio).items():
        if (aio, name) in NO_TWIN:
            continue
        assert hasattr(sync, name), f"{sync.__name__} lacks {name} of {aio.__name__}"
        twin = getattr(sync, name)
        if isinstance(member, property):
            assert isinstance(twin, property), f"{sync.__name__}.{name} is not a property"
            continue
        if callable(member):
            assert params(twin) == params(member), \
                f"{sync.__name__}.{name} has another signature than {aio.__name__}.{name}"
            assert not inspect.iscoroutinefunction(twin)
    for name in public(sync):
        assert name in instance_members(aio) or (sync, name) in SYNC_ONLY, \
            f"{sync.__name__}.{name} has no async original in {aio.__name__}"


def test_exceptions_listed_above_still_exist() -> None:
    # a stale entry would hide a real gap once the member comes back
    for cls, name in [*NO_TWIN, *SYNC_ONLY]:
        assert name in vars(cls), f"{cls.__name__}.{name} no longer exists"


def test_one_shot_load_array_takes_the_table_service_arguments() -> None:
    table = inspect.signature(aiobisque.TableService.load_array).parameters
    one_shot = inspect.signature(aiobisque.load_array).parameters
    assert [p for p in one_shot if p not in ("root", "auth")] == \
        [p for p in table if p != "self"]
    for name in table:
        if name != "self":
            assert one_shot[name].default == table[name].default, name


def test_the_package_docstring_is_an_overview() -> None:
    doc = aiobisque.__doc__ or ""
    # what it is, the three ways in, and where to read more
    for needed in ("BisqueSession", "Session", "load_array", "aiobisque.compat",
                   "``aiobisque`` command", "aiobisque.dask", "aiobisque.server", "README"):
        assert needed in doc, needed
    assert len(doc.splitlines()) > 10
