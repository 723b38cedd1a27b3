"""URL building and document parsing (pure, no server)."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobisque.errors import NotFoundError, ProtocolError, ResponseTooLargeError, UsageError
from aiobisque.protocol import (
    not_an_array,
    parse_info,
    parse_services,
    parse_session_user,
    parse_uniq,
    quote_component,
    redact_url,
    table_url,
)

UNIQ = "00-orJQLiXgqh8K955C6qzhyC"
BASE = "https://bisque.example.org/table/"


@pytest.mark.parametrize(
    "text",
    [
        UNIQ,
        f"  {UNIQ}\n",
        f"https://bisque.example.org/data_service/{UNIQ}",
        f"https://bisque.example.org/data_service/{UNIQ}/",
        f"https://h/client_service/view?resource=https://h/data_service/{UNIQ}",
        f"https://h/client_service/view?resource=https%3A%2F%2Fh%2Fdata_service%2F{UNIQ}",
    ],
)
def test_uniq_forms(text: str) -> None:
    assert parse_uniq(text) == UNIQ


@pytest.mark.parametrize("text", ["", "..", "a/b", "a b", "x?y", "00-abc#frag", "\x00", "é"])
def test_bad_uniqs_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="not a BisQue resource"):
        parse_uniq(text)


def test_path_components_are_quoted_one_by_one() -> None:
    url = table_url(BASE, UNIQ, ["odd name: x", "0:10", "a/b", ".."], "0;4,2", ["format:hdf"])
    assert url == (
        f"{BASE}{UNIQ}/odd%20name%3A%20x/%220%3A10%22/a%2Fb/%2E%2E/0;4,2/format:hdf"
    )
    assert quote_component("12,3") == "%2212%2C3%22"


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_any_path_stays_under_the_table_service(parts: list[str]) -> None:
    parts = [p for p in parts if "\x00" not in p]
    url = table_url(BASE, UNIQ, parts, "0;1", ["format:hdf"])
    split = urlsplit(url)
    assert (split.scheme, split.netloc, split.query, split.fragment) == (
        "https", "bisque.example.org", "", "")
    segments = split.path.split("/")
    assert segments[:3] == ["", "table", UNIQ]
    # one segment per component, and each decodes back to the component (maybe quoted)
    assert len(segments) == 3 + len(parts) + 2
    for seg, part in zip(segments[3:], parts, strict=False):
        assert unquote(seg) in (part, f'"{part}"')
        assert seg not in (".", "..")


def test_redact_url_drops_credentials_and_query() -> None:
    assert redact_url("https://me:secret@h:8443/x/y?token=abc#f") == "https://h:8443/x/y"


def test_parse_services_resolves_and_normalises() -> None:
    xml = (
        '<resource><tag name="service" type="table" value="http://other:81/p/table"/>'
        '<tag name="service" type="auth_service" value="/auth_service/"/></resource>'
    )
    services = parse_services(xml, "http://root:80/")
    assert services == {
        "table": "http://other:81/p/table/",
        "auth_service": "http://root:80/auth_service/",
    }
    with pytest.raises(ProtocolError, match="not XML"):
        parse_services("<html><body>login", "http://root")
    with pytest.raises(ProtocolError, match="lists no services"):
        parse_services("<resource/>", "http://root")


def test_parse_session_user() -> None:
    url = "http://h/auth_service/session"
    assert parse_session_user('<session><tag name="user" value="alice"/></session>', url) == "alice"
    assert parse_session_user("<session/>", url) is None


def info(doc: object, max_bytes: int = 1 << 40) -> object:
    return parse_info(json.dumps(doc), uniq=UNIQ, path="a/b", url=BASE, max_bytes=max_bytes)


def test_parse_info_matrix_table_group() -> None:
    m = info({"headers": ["0", "1"], "types": ["float32"] * 2, "sizes": [4, 2, 3],
              "group": [{"path": "/a/b", "type": "matrix"}], "meta": {"unit": "nm"}})
    assert (m.kind, m.shape, m.dtype, dict(m.meta)) == ("matrix", (4, 2, 3), np.float32,
                                                         {"unit": "nm"})
    t = info({"headers": ["x", "name"], "types": ["int64", "S8"], "sizes": [10, 2]})
    assert t.kind == "table" and t.shape == (10,) and t.dtype.names == ("x", "name")
    g = info({"group": [{"path": "/a/b/c", "type": "matrix"}, {"path": "/a/b/g", "type": "group"}]})
    assert g.kind == "group" and g.shape is None and g.arrays() == ["/a/b/c"]
    err = not_an_array(g)
    assert isinstance(err, NotFoundError) and "/a/b/c" in str(err)


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"sizes": "big", "types": ["float32"]},
        {"sizes": [-1], "types": ["float32"]},
        {"sizes": [1.5], "types": ["float32"]},
        {"sizes": [3], "types": []},
        {"sizes": [3], "types": ["no-such-type"]},
        {"sizes": [3], "types": ["O"]},
    ],
)
def test_parse_info_rejects_malformed(doc: object) -> None:
    with pytest.raises(ProtocolError):
        info(doc)


def test_parse_info_refuses_allocation_bombs() -> None:
    with pytest.raises(ResponseTooLargeError, match="max_bytes"):
        info({"headers": ["0"], "types": ["float64"], "sizes": [10**12, 10**6]}, max_bytes=1 << 34)


def test_parse_info_not_json() -> None:
    with pytest.raises(ProtocolError, match="login page"):
        parse_info("<html>Please log in</html>", uniq=UNIQ, path="", url=BASE, max_bytes=1)


def test_empty_array_without_columns_still_opens() -> None:
    got = info({"headers": [], "types": [], "sizes": [3, 0]})
    assert got.kind == "matrix" and got.shape == (3, 0) and got.size == 0
