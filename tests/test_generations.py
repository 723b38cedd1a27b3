"""Servers of every generation: BisQue 0.5/0.6, its Python 3 port and ViQi (issue #13).

The same downloads run against the embedded server answering as each generation
(``run_server(generation=...)``); the wire format each one sends is checked with raw
requests; ViQi's own client (``vqapi``) logs in to the ``viqi`` server and reads a table
with its session cookie alone, as it does against real ViQi servers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import h5py
import numpy as np
import pytest
from yarl import URL

from aiobisque import AuthenticationError, BisqueSession, Config
from aiobisque.cli import EXIT_AUTH, EXIT_OK, main
from aiobisque.fetch import origin
from aiobisque.protocol import parse_services, parse_session_user
from aiobisque.server import TableServer, run_server, samples, serve_in_thread
from aiobisque.server.command import add_arguments
from aiobisque.server.pytest_plugin import basic_auth
from aiobisque.session import TrustedCookieJar
from tests.conftest import FAST_RETRY

GENERATIONS = ["bisque", "py3", "viqi"]
USERS = {"alice": "wonderland"}
SERVER_OPTIONS = {"users": USERS}  # the leak guard looks for these
NUMBERS = np.array(
    [(1, 0.5, 7), (2, 1.5, 8), (3, 2.5, 9)], dtype=[("id", "<i4"), ("x", "<f8"), ("n", "<i8")]
)
BISQUE_NAMES = {"table", "data_service", "auth_service", "blob_service", "image_service",
                "module_service", "import"}
VIQI_NAMES = {"tables", "meta", "auths", "blobs", "pixels", "module_service", "import"}


def SAMPLES(folder: Path) -> None:
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volume", (12, 9, 5), dtype="float32", seed=1)
    samples.write_table(folder, "tab", "rows", nrows=9)
    with h5py.File(folder / "nums.h5", "w") as h5:
        h5["numbers"] = NUMBERS


def config() -> Config:
    return Config(retry=FAST_RETRY)


@pytest.fixture(params=GENERATIONS)
async def gen_server(request: pytest.FixtureRequest, folder: Path) -> AsyncIterator[TableServer]:
    async with run_server(folder, users=USERS, generation=request.param) as srv:
        yield srv


@pytest.fixture(scope="module", params=GENERATIONS)
def gen_thread_server(request: pytest.FixtureRequest,
                      module_folder: Path) -> Iterator[TableServer]:
    with serve_in_thread(module_folder, users=USERS, generation=request.param) as srv:
        yield srv


# -- the same downloads from every generation -----------------------------------------------


async def test_load_array(gen_server: TableServer, folder: Path) -> None:
    async with BisqueSession(gen_server.root, auth=("alice", "wonderland"), config=config()) as bq:
        got = await bq.load_array("vol", "volume", [slice(2, 10), slice(None, None, 2), 3])
        assert bq.user == "alice"
    want = samples.expected(samples.resource_file(folder, "vol"), "volume")
    np.testing.assert_array_equal(got, want[2:10, ::2, 3:4])  # an index keeps its axis


async def test_load_table(gen_server: TableServer, folder: Path) -> None:
    async with BisqueSession(gen_server.root, auth=("alice", "wonderland"), config=config()) as bq:
        numbers = await bq.load_table("nums", "numbers")
        rows = await bq.load_table("tab", "rows", slice(2, 6))
    for name in ("id", "x", "n"):
        np.testing.assert_array_equal(numbers[name], NUMBERS[name])
    want = samples.expected(samples.resource_file(folder, "tab"), "rows")[2:6]
    np.testing.assert_array_equal(rows["id"], want["id"])
    np.testing.assert_array_equal(rows["x"], want["x"])


async def test_info_of_a_group(gen_server: TableServer) -> None:
    async with BisqueSession(gen_server.root, auth=("alice", "wonderland"), config=config()) as bq:
        info = await bq.info(samples.SEED_UNIQ)
    assert info.kind == "group" and info.children


async def test_store_array_then_read_it_back(gen_server: TableServer) -> None:
    async with BisqueSession(gen_server.root, auth=("alice", "wonderland"), config=config()) as bq:
        result = await bq.table.store_array(np.arange(6, dtype="int16"), "up")
        assert result.uri == bq.services["data_service"] + result.uniq
        np.testing.assert_array_equal(await bq.load_array(result.uniq, "up"), np.arange(6))


async def test_wrong_password_is_an_authentication_error(gen_server: TableServer) -> None:
    with pytest.raises(AuthenticationError, match="wrong user name or password"):
        async with BisqueSession(gen_server.root, auth=("alice", "WRONG-pw-123"),
                                 config=config()):
            pass


def test_cli_info_and_download(capsys: pytest.CaptureFixture[str], gen_thread_server: TableServer,
                               folder: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISQUE_PASSWORD", "wonderland")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    login = ["--user", "alice"]
    root = gen_thread_server.root
    assert main(["info", root, samples.SEED_UNIQ, samples.SEED_PATH, *login]) == EXIT_OK
    assert "shape: (5, 5, 5, 1)" in capsys.readouterr().out
    out_file = tmp_path / "v.npy"
    status = main(["download", root, "vol", "volume", "-o", str(out_file), "--slices", "1:4",
                   *login])
    assert status == EXIT_OK, capsys.readouterr().err
    want = samples.expected(samples.resource_file(folder, "vol"), "volume")[1:4]
    np.testing.assert_array_equal(np.load(out_file), want)
    monkeypatch.setenv("BISQUE_PASSWORD", "WRONG-pw-123")
    assert main(["info", root, "vol", *login]) == EXIT_AUTH


# -- what each generation sends -------------------------------------------------------------


async def _get(url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:
        return resp.status, resp.headers, await resp.text()


async def test_services_wire_format(gen_server: TableServer) -> None:
    status, headers, body = await _get(gen_server.root + "/services")
    doc = ElementTree.fromstring(body)
    assert status == 200 and headers["Content-Type"].startswith("text/xml")
    if gen_server.generation.name == "viqi":
        # ViQi: <service type="NAME">URL</service>, what vqapi's _load_services reads
        assert {e.tag for e in doc} == {"service"}
        listed = {e.get("type"): e.text for e in doc}
        assert set(listed) == VIQI_NAMES
        assert listed["tables"] == gen_server.root + "/tables/"
        assert headers["x-viqi-api-version"]
    else:
        assert {(e.tag, e.get("name")) for e in doc} == {("tag", "service")}
        listed = {e.get("type"): e.get("value") for e in doc}
        assert set(listed) == BISQUE_NAMES
        assert listed["table"] == gen_server.root + "/table/"
        assert "x-viqi-api-version" not in headers


async def test_session_wire_format(gen_server: TableServer) -> None:
    url = gen_server.service_url("auth_service") + "session"
    status, headers, body = await _get(url, headers=basic_auth())
    doc = ElementTree.fromstring(body)
    assert status == 200 and doc.tag == "session"
    if gen_server.generation.name == "viqi":
        # natural XML: vqapi looks for a <user> child and reads <username>
        assert doc.findtext("username") == "alice" and doc.findtext("user")
        assert "mex_session=" in headers["Set-Cookie"]
    else:
        assert [t.get("value") for t in doc.iter("tag") if t.get("name") == "user"] == ["alice"]
        assert "Set-Cookie" not in headers
    _, _, anonymous = await _get(url)
    assert ElementTree.fromstring(anonymous).tag == "session"
    assert parse_session_user(anonymous, url) is None
    assert parse_session_user(body, url) == "alice"


async def test_py3_port_answers_400_to_every_csv_data_request(gen_server: TableServer) -> None:
    table = gen_server.table_url
    status, _, body = await _get(table + "tab/rows/0;1,0;2/format:csv", headers=basic_auth())
    if gen_server.generation.name == "py3":
        assert status == 400 and "Data cannot be converted to CSV" in body
    else:
        assert status == 200 and body.startswith("id,x,label\n0,")
    # info/format:csv does not call the broken exporter
    status, _, body = await _get(table + "tab/rows/info/format:csv", headers=basic_auth())
    assert status == 200 and body.startswith("headers,id,x,label")


# -- ViQi's cookie session --------------------------------------------------------------------


async def test_viqi_cookie_session(folder: Path) -> None:
    async with run_server(folder, users=USERS, generation="viqi") as srv:
        info = srv.table_url + "nums/numbers/info/format:json"
        jar = aiohttp.CookieJar(unsafe=True)  # the server is on 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(info) as resp:
                assert resp.status == 401  # anonymous: no cookie yet
            login = srv.service_url("auths") + "session"
            async with http.get(login, headers=basic_auth()) as resp:
                assert resp.status == 200 and "mex_session" in resp.cookies
            async with http.get(info) as resp:  # the cookie alone, as vqapi after its login
                assert resp.status == 200
            async with http.get(info, headers=basic_auth()) as resp:
                assert resp.status == 200  # Basic still works, and opens no second session
                assert "Set-Cookie" not in resp.headers
            async with http.get(info, headers=basic_auth("alice", "WRONG-pw-123")) as resp:
                assert resp.status == 401  # wrong credentials win over a good cookie
        assert srv.sessions is not None and srv.sessions.opened == 1
        forged = {"Cookie": "mex_session=forged-value"}
        assert (await _get(info, headers=forged))[0] == 401
        status, _, body = await _get(login, headers=forged)
        assert status == 200 and ElementTree.fromstring(body).find("username") is None


async def test_viqi_logout_ends_the_cookie_session(folder: Path) -> None:
    async with run_server(folder, users=USERS, generation="viqi") as srv:
        info = srv.table_url + "nums/numbers/info/format:json"
        auths = srv.service_url("auths")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(auths + "session", headers=basic_auth()) as resp:
                cookie = resp.cookies["mex_session"].value
            # vqapi's AuthProxy.logout: GET logout_handler without following the redirect
            async with http.get(auths + "logout_handler", allow_redirects=False) as resp:
                assert resp.status == 302
        status, _, _ = await _get(info, headers={"Cookie": f"mex_session={cookie}"})
        assert status == 401 and srv.sessions is not None and len(srv.sessions) == 0


async def test_client_keeps_one_viqi_session(folder: Path) -> None:
    async with run_server(folder, users=USERS, generation="viqi") as srv:
        async with BisqueSession(srv.root, auth=("alice", "wonderland"), config=config()) as bq:
            await bq.load_array("vol", "volume", request_bytes=512)
            assert bq.services["tables"] == bq.services["table"] == srv.table_url
            assert bq.services["auths"] == bq.services["auth_service"]
        assert srv.stats.requests["data"] > 3
        assert srv.sessions is not None and srv.sessions.opened == 1


async def test_session_cookies_only_for_trusted_origins() -> None:
    ours = origin("http://127.0.0.1:8080")
    jar = TrustedCookieJar(lambda url: origin(url) == ours)
    jar.update_cookies({"mex_session": "from-elsewhere"}, URL("http://127.0.0.1:9090/x"))
    assert not jar.filter_cookies(URL("http://127.0.0.1:8080/tables/"))
    jar.update_cookies({"mex_session": "ours"}, URL("http://127.0.0.1:8080/login"))
    assert jar.filter_cookies(URL("http://127.0.0.1:8080/tables/"))["mex_session"].value == "ours"
    # cookies ignore ports and schemes; credentials (and so this cookie) do not
    assert not jar.filter_cookies(URL("http://127.0.0.1:9090/tables/"))
    assert not jar.filter_cookies(URL("https://127.0.0.1:8080/tables/"))


# -- composing with table_service= ------------------------------------------------------------


@pytest.mark.parametrize(("generation", "name"), [("viqi", "table"), ("bisque", "tables")])
async def test_table_service_overrides_only_the_table_name(folder: Path, generation: str,
                                                           name: str) -> None:
    async with run_server(folder, users=USERS, generation=generation,
                          table_service=name) as srv:
        _, _, body = await _get(srv.root + "/services")
        listed = set(parse_services(body, srv.root))
        assert name in listed
        assert ("auths" in listed) == (generation == "viqi")
        async with BisqueSession(srv.root, auth=("alice", "wonderland"), config=config()) as bq:
            got = await bq.load_array("vol", "volume", [0])
        assert got.shape == (1, 9, 5)


def test_unknown_generation_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="unknown server generation 'viqi2'"), \
            serve_in_thread(folder, generation="viqi2"):
        pass


def test_serve_command_answers_as_viqi(folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "aiobisque.server", str(folder), "--generation", "viqi",
         "--public", "nums"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        root = process.stdout.readline().split()[1]
        with urllib.request.urlopen(root + "/services", timeout=10) as response:
            assert response.headers["x-viqi-api-version"]
            assert f'<service type="tables">{root}/tables/</service>' in response.read().decode()
        with urllib.request.urlopen(f"{root}/tables/nums/numbers/info/format:json",
                                    timeout=10) as response:
            assert response.status == 200
        process.terminate()
        _, err = process.communicate(timeout=15)
        assert f"table service: {root}/tables/" in err and "answering as: viqi" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_takes_generation() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["dir", "--generation", "viqi"]).generation == "viqi"
    assert parser.parse_args(["dir"]).generation == "bisque"
    assert parser.parse_args(["dir"]).table_service is None


@pytest.mark.parametrize("bisque_generation", GENERATIONS)
async def test_plugin_fixtures_take_a_generation(bisque_server: TableServer,
                                                 bisque_generation: str) -> None:
    assert bisque_server.generation.name == bisque_generation
    async with BisqueSession(bisque_server.root, auth=("alice", "wonderland")) as bq:
        assert (await bq.info(samples.SEED_UNIQ)).kind == "group"


# -- the client's parsing -------------------------------------------------------------------------


def test_parse_services_reads_both_forms() -> None:
    viqi = ('<resource><service type="tables">http://h/tables/</service>'
            '<service type="auths">/auths</service></resource>')
    assert parse_services(viqi, "http://h") == {
        "tables": "http://h/tables/", "table": "http://h/tables/",
        "auths": "http://h/auths/", "auth_service": "http://h/auths/",
    }
    bisque = '<resource><tag name="service" type="table" value="http://h/table/"/></resource>'
    assert parse_services(bisque, "http://h") == {"table": "http://h/table/"}
    # a server that lists both names keeps its own meaning for each
    both = ('<resource><service type="tables">http://h/new/</service>'
            '<service type="table">http://h/old/</service></resource>')
    assert parse_services(both, "http://h")["table"] == "http://h/old/"


# -- ViQi's own client ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def viqi_thread_server(module_folder: Path) -> Iterator[TableServer]:
    with serve_in_thread(module_folder, users=USERS, generation="viqi") as srv:
        yield srv


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vqapi_logs_in_and_reads_a_table(viqi_thread_server: TableServer) -> None:
    comm = pytest.importorskip("vqapi.comm")
    pytest.importorskip("pandas")
    session = comm.BQSession().init_local("alice", "wonderland",
                                          bisque_root=viqi_thread_server.root, create_mex=False)
    assert session is not None
    try:
        assert session.c.auth is None  # vqapi dropped the password: the cookie carries on
        assert "mex_session" in session.c.cookies
        frame = session.service("tables").load_table("nums", "numbers")
        assert list(frame.columns) == ["id", "x", "n"]
        np.testing.assert_array_equal(frame["n"].to_numpy(), NUMBERS["n"])
    finally:
        session.c.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vqapi_refuses_a_wrong_password(viqi_thread_server: TableServer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    comm = pytest.importorskip("vqapi.comm")
    with caplog.at_level(logging.ERROR, "vqapi"):
        session = comm.BQSession().init_local("alice", "WRONG-pw-123",
                                              bisque_root=viqi_thread_server.root,
                                              create_mex=False)
    assert session is None
