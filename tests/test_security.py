"""Credentials and URLs: secrets never leak, never travel to another origin."""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlsplit

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobisque import (
    AuthenticationError,
    BisqueError,
    BisqueSession,
    Config,
    DownloadError,
    InsecureTransportError,
    MexToken,
    UsageError,
)
from aiobisque.fetch import origin
from aiobisque.protocol import table_url
from aiobisque.server import FaultPlan, TableServer
from tests.conftest import FAST_RETRY, USER
from tests.hostile import Hostile, body, hdf_image, hostile, serve

SECRET = "s3cr3t-Pa55"
GOOD = np.arange(12, dtype=np.float32).reshape(4, 3)


def secrets(user: str = "alice", password: str = SECRET) -> list[str]:
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [password, basic, basic[:12]]


def redirecting(target: str) -> object:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target + request.path)
    return handler


@pytest.mark.parametrize("variant", ["other port", "other host"])
async def test_redirect_to_another_origin_drops_credentials(variant: str) -> None:
    recorded = Hostile()
    recorded.data = body(hdf_image(GOOD))
    host = "127.0.0.2" if variant == "other host" else "127.0.0.1"
    async with serve(recorded.handle, host=host) as elsewhere, hostile() as h:
        h.data = redirecting(elsewhere)  # type: ignore[assignment]
        async with BisqueSession(h.root, auth=("alice", SECRET)) as bq:
            got = await bq.table.load_array("00-x", "array")
    np.testing.assert_array_equal(got, GOOD)
    assert recorded.seen and all("Authorization" not in hs for hs in recorded.seen)
    assert any("Authorization" in hs for hs in h.seen)  # the BisQue origin did get them


async def test_same_origin_redirect_keeps_credentials() -> None:
    async with hostile() as h:
        async def handler(request: web.Request) -> web.StreamResponse:
            if "moved" not in request.path:
                raise web.HTTPTemporaryRedirect(request.path.replace("/table/", "/table/moved/"))
            return web.Response(body=hdf_image(GOOD))
        h.data = handler
        async with BisqueSession(h.root, auth=("alice", SECRET)) as bq:
            np.testing.assert_array_equal(await bq.table.load_array("00-x", "array"), GOOD)
        moved = [hs for hs, p in zip(h.seen, h.paths, strict=True) if "/moved/" in p]
        assert moved and all("Authorization" in hs for hs in moved)


def test_origin_distinguishes_scheme_host_port() -> None:
    a = origin("https://h.org/x")
    assert a == origin("https://H.org:443/y")
    assert a != origin("http://h.org/x")
    assert a != origin("https://h.org:8443/x")
    assert a != origin("https://g.org/x")


def test_plain_http_to_remote_host_needs_opt_in() -> None:
    with pytest.raises(InsecureTransportError, match="unencrypted"):
        BisqueSession("http://bisque.example.org", auth=("alice", SECRET))
    with pytest.raises(InsecureTransportError):
        BisqueSession("http://10.1.2.3:8080", auth=MexToken("tok"))
    BisqueSession("http://bisque.example.org", auth=("alice", SECRET), allow_insecure=True)
    BisqueSession("http://bisque.example.org")  # anonymous: nothing to protect
    BisqueSession("http://localhost:8080", auth=("alice", SECRET))


async def test_no_secret_in_errors_reprs_or_logs(server: TableServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def keep(err: BaseException) -> None:
        while err is not None:
            texts.extend([str(err), repr(err), *getattr(err, "__notes__", [])])
            err = err.__cause__ or err.__context__  # type: ignore[assignment]

    # wrong password, wrong Mex token
    for auth in (("alice", SECRET), MexToken(SECRET, user="alice")):
        try:
            async with BisqueSession(server.root, auth=auth):
                pass
        except AuthenticationError as exc:
            keep(exc)
        else:
            raise AssertionError("the wrong credentials were accepted")
    # failures with good credentials: 404, 403, retries exhausted
    async with BisqueSession(server.root, auth=("bob", "builder"), retry=FAST_RETRY) as bq:
        texts += [repr(bq), repr(bq.table), str(bq.config)]
        for call in (bq.table.info("nope", "x"), bq.table.load_array("private", "a")):
            try:
                await call
            except BisqueError as exc:
                keep(exc)
        server.faults = FaultPlan(error_rate=1.0)
        try:
            await bq.table.load_array("vol", "volume", retry=FAST_RETRY.__class__(
                max_attempts=2, backoff_initial=0, backoff_max=0))
        except DownloadError as exc:
            keep(exc)
    texts += [r.getMessage() for r in caplog.records]
    texts.append(repr(MexToken(SECRET, user="alice")))
    assert len(texts) > 10
    leaked = [t for t in texts for s in secrets() + secrets("bob", "builder") if s in t]
    assert leaked == []


@settings(max_examples=300, deadline=None)
@given(uniq=st.text(max_size=30), parts=st.lists(st.text(max_size=10), max_size=4))
def test_fuzzed_uniq_and_path_stay_under_the_table_service(uniq: str, parts: list[str]) -> None:
    base = "https://bisque.example.org/table/"
    try:
        url = table_url(base, uniq, [p for p in parts if p and "\x00" not in p], "0;1",
                        ["format:hdf"])
    except UsageError:
        return  # refused: fine
    split = urlsplit(url)
    assert split.netloc == "bisque.example.org" and not split.query and not split.fragment
    assert split.path.startswith("/table/")
    uniq_segment = split.path.split("/")[2]
    assert uniq_segment not in ("", ".", "..") and "%" not in uniq_segment


async def test_config_repr_has_no_secret() -> None:
    assert "password" not in repr(Config()).lower()


def test_loopback_means_an_ip_literal_or_localhost() -> None:
    from aiobisque.fetch import is_loopback

    assert is_loopback("http://127.0.0.1:8080") and is_loopback("http://[::1]:80")
    assert is_loopback("http://localhost") and is_loopback("http://127.3.4.5")
    assert not is_loopback("http://127.attacker.example/")
    assert not is_loopback("http://127.0.0.1.nip.io:8080")
    with pytest.raises(InsecureTransportError):
        BisqueSession("http://127.0.0.1.nip.io:8080", auth=("alice", SECRET))


def test_pasted_url_with_credentials_is_redacted_in_errors() -> None:
    from aiobisque.protocol import parse_uniq

    with pytest.raises(UsageError) as info:
        parse_uniq(f"https://alice:{SECRET}@bisque.example.org/data_service/00 abc")
    assert SECRET not in str(info.value) and "bisque.example.org" in str(info.value)


async def test_services_on_another_origin_get_no_credentials_unless_trusted() -> None:
    elsewhere = Hostile()
    elsewhere.data = body(hdf_image(GOOD))
    async with serve(elsewhere.handle) as other_root, hostile() as h:
        elsewhere.root = other_root  # the table service, on another port

        async def services(request: web.Request) -> web.StreamResponse:
            if request.path != "/services":
                return await Hostile.handle(h, request)
            return web.Response(text=(
                f'<resource><tag name="service" type="table" value="{other_root}/table/"/>'
                f'<tag name="service" type="auth_service" value="{h.root}/auth_service/"/>'
                "</resource>"), content_type="text/xml")

        async with serve(services) as root:  # the root: /services points elsewhere
            h.root = root
            async with BisqueSession(root, auth=("alice", SECRET)) as bq:
                np.testing.assert_array_equal(await bq.table.load_array("00-x", "array"), GOOD)
            assert elsewhere.seen and all("Authorization" not in hs for hs in elsewhere.seen)
            elsewhere.seen.clear()
            async with BisqueSession(root, auth=("alice", SECRET),
                                     trusted_origins=(other_root,)) as bq:
                await bq.table.load_array("00-x", "array")
            assert elsewhere.seen and all("Authorization" in hs for hs in elsewhere.seen)


async def test_plain_http_trusted_origin_needs_opt_in(server: TableServer) -> None:
    with pytest.raises(InsecureTransportError, match="unencrypted"):
        async with BisqueSession(server.root, auth=("alice", "wonderland"),
                                 trusted_origins=("http://data.example.org",)):
            pass


async def test_root_spelled_otherwise_than_the_server_says_is_explained(
        server: TableServer) -> None:
    # the server announces its services at 127.0.0.1; the user typed localhost
    port = server.root.rsplit(":", 1)[1]
    root = f"http://localhost:{port}"
    with pytest.raises(AuthenticationError) as caught:
        async with BisqueSession(root, auth=USER):
            pass
    message = str(caught.value)
    assert f"announces its login service at http://127.0.0.1:{port}" in message
    assert f"root='http://127.0.0.1:{port}'" in message and "trusted_origins=" in message
    assert "wrong user name or password" not in message
    # either fix works
    async with BisqueSession(root, auth=USER,
                             trusted_origins=(f"http://127.0.0.1:{port}",)) as bq:
        assert bq.user == USER[0]


async def test_no_credentials_in_the_exception_chain() -> None:
    """A malformed response head makes aiohttp raise ClientResponseError, whose
    request_info holds the request's headers, Authorization included: nothing of it may
    be kept in the causes or context of the error raised."""
    from tests.conftest import exception_texts
    from tests.hostile import raw_server

    def bad_head(path: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: not-a-number\r\n\r\nxx"

    async with raw_server(bad_head) as root:
        async with BisqueSession(root, auth=("alice", SECRET), retry=FAST_RETRY) as bq:
            with pytest.raises(BisqueError) as info:
                await bq.table.load_array("00-x", "array", retry=FAST_RETRY.__class__(
                    max_attempts=2, backoff_initial=0, backoff_max=0))
    texts = exception_texts(info.value)
    assert any("RequestInfo" in t or "ClientResponseError" in t for t in texts) is False
    leaked = [t for t in texts for s in secrets() if s in t]
    assert leaked == []
