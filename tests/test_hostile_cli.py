"""Hostile servers against the command line: one clear line, never a traceback or an
escape sequence a terminal would obey."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from aiobisque.cli import main
from tests.hostile import hostile_in_thread, info_json

ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"  # retitle the window, clear the screen, red


pytestmark = pytest.mark.usefixtures("clean_cli_env")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def no_control(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) <= 0x9f]
    assert not bad, f"control characters printed: {bad[:5]} in {text[:300]!r}"


def test_escape_sequences_in_info_are_neutralised(capsys: pytest.CaptureFixture[str]) -> None:
    group = {"group": [{"path": f"/g{ESC}x", "type": "matrix"}], "meta": {f"k{ESC}": ESC}}
    array = {**info_json((4, 3)), "meta": {"note": f"a{ESC}b"}}

    async def info(request: web.Request) -> web.Response:
        doc = group if request.path == "/table/00-x/info/format:json" else array
        return web.json_response(doc)

    with hostile_in_thread() as h:
        h.info = info
        for extra in ([], ["--json"]):
            status, out, err = run(capsys, "info", h.root, "00-x", *extra)
            assert status == 0, err
            no_control(out + err)
        status, out, err = run(capsys, "info", h.root, "00-x", "g")
        assert status == 0 and "note" in out
        no_control(out + err)
        assert "\\x1b" in out  # shown, escaped


def test_escape_sequences_in_error_bodies_are_neutralised(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"no such thing {ESC} here")

    with hostile_in_thread() as h:
        h.data = gone
        for verbose in ([], ["-vv"]):
            status, out, err = run(capsys, "download", h.root, "00-x", "array",
                                   "-o", tmp_path / "a.npy", "--no-progress", *verbose)
            assert status == 1
            assert "Traceback" not in err and "no such thing" in err
            no_control(out + err)


@pytest.mark.parametrize("doc", [
    {"sizes": [2**62, 0], "types": ["float32"]},
    {"sizes": [2, 3], "types": ["S0"]},
    {"sizes": [2, 3], "types": ["(2,3"]},
    {"sizes": [2, 3], "types": ["(1000000000,)f8"]},
    "[" * 100_000,
    {"sizes": [3], "types": ["f8"], "group": 5},
])
def test_malformed_info_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, doc: object) -> None:
    with hostile_in_thread() as h:
        h.info = doc
        for argv in (["info", h.root, "00-x", "array"],
                     ["download", h.root, "00-x", "array", "-o", tmp_path / "a.npy",
                      "--no-progress"]):
            status, out, err = run(capsys, *argv)
            if isinstance(doc, dict) and doc.get("group") == 5:
                continue  # a useless group list is ignored: the array itself is fine
            assert status == 1, (out, err)
            assert "Traceback" not in err and "00-x/array" in err
            assert err.count("\n") == 1


@pytest.mark.parametrize("location", ["http://127.0.0.1:1\\evil", "http://[::1",
                                      "http://h:99999/", "\\\\evil\\share"])
def test_malformed_redirect_is_a_protocol_error(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path, location: str) -> None:
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    with hostile_in_thread() as h:
        h.data = redirect
        status, _, err = run(capsys, "download", h.root, "00-x", "array", "-o",
                               tmp_path / "a.npy", "--no-progress")
    assert status == 1 and "redirect to a malformed URL" in err and "Traceback" not in err
