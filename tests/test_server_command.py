"""The ``serve`` command: options, the one ``serving`` line, clean exit on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aiobisque.server import FaultPlan, run_server, samples
from aiobisque.server.command import add_arguments, describe, plan_from_args
from aiobisque.server.pytest_plugin import basic_auth


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_fault_options_build_a_plan(tmp_path: Path) -> None:
    args = parse(
        str(tmp_path),
        "--latency", "0.1", "--bandwidth", "16MB", "--total-bandwidth", "160MiB",
        "--error-rate", "0.1", "--error-status", "500", "--error-status", "503",
        "--fail-first", "2", "--throttle-rate", "0.05", "--retry-after", "2",
        "--reset-rate", "0.05", "--truncate-rate", "0.2", "--truncate-framing", "mixed",
        "--stall-rate", "0.01", "--stall-seconds", "5", "--seed", "9",
    )  # fmt: skip
    assert plan_from_args(args) == FaultPlan(
        seed=9,
        latency=0.1,
        bandwidth=16e6,
        total_bandwidth=160 * 2**20,
        error_rate=0.1,
        error_statuses=(500, 503),
        fail_first=2,
        throttle_rate=0.05,
        retry_after="2",
        reset_rate=0.05,
        truncate_rate=0.2,
        truncate_framing="mixed",
        stall_rate=0.01,
        stall_seconds=5,
    )
    assert plan_from_args(parse(str(tmp_path))) == FaultPlan()


def test_every_option_has_help_and_the_epilog_shows_a_wan_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="aiobisque serve")
    add_arguments(parser)
    undocumented = [
        action.option_strings or action.dest
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert undocumented == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--latency SECONDS" in text and "(default unlimited)" in text
    # the example runs as printed (the backslash joins its two lines)
    example = text[text.index("aiobisque serve ./data") :].replace("\\\n", " ").split()
    wan = plan_from_args(parse(str(tmp_path), *example[3:]))
    assert (wan.latency, wan.bandwidth, wan.total_bandwidth) == (0.1, 16e6, 160e6)


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(str(tmp_path), "--user", "nopassword")
    with pytest.raises(SystemExit):
        parse(str(tmp_path), "--bandwidth", "fast")
    capsys.readouterr()


async def test_banner_names_uniqs_and_the_demo_login(tmp_path: Path) -> None:
    samples.write_array(tmp_path, "vol", "v", (2, 3))
    samples.write_array(tmp_path, "open", "v", (2, 3))
    async with run_server(tmp_path, public=["open", "gone"]) as server:
        text = describe(server, demo_login=True, demo_token=True)
    lines = text.splitlines()
    assert lines[1:3] == ["  open  (public)", "  vol  (login required)"]
    assert "  warning: --public gone: no such file" in lines
    assert "users: alice" in lines
    assert any("alice / wonderland" in line for line in lines)  # the default the user did not pick
    assert f"table service: {server.table_url}" in lines


async def test_banner_of_an_empty_folder_with_chosen_logins(tmp_path: Path) -> None:
    async with run_server(tmp_path, users={"bob": "pw1"}, mex_tokens={"T0K": "bob"}) as server:
        text = describe(server, demo_login=False, demo_token=False)
    assert "none yet" in text and "users: bob" in text and "mex tokens for: bob" in text
    assert "pw1" not in text and "T0K" not in text and "wonderland" not in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_one_line_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    samples.write_seed(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "aiobisque.server", str(tmp_path), "--port", "0",
         "--user", "bob:secret", "--public", samples.SEED_UNIQ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:") and not line.endswith(":0\n")
        root = line.split()[1]
        headers = basic_auth("bob", "secret")
        request = urllib.request.Request(root + "/auth_service/session", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'value="bob"' in response.read()
        url = f"{root}/table/{samples.SEED_UNIQ}/{samples.SEED_PATH}/0/format:hdf"
        with urllib.request.urlopen(url, timeout=10) as response:  # public: no login
            assert response.status == 200 and response.read(4) == b"\x89HDF"
        process.send_signal(signum)
        out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert out == ""  # exactly one line on stdout: scripts parse it
        # what a new user needs is on stderr: the uniqs, who may read them, the logins
        assert f"  {samples.SEED_UNIQ}  (public)" in err.splitlines()
        assert "users: bob" in err.splitlines()
        assert "secret" not in err and "wonderland" not in err  # chosen passwords stay private
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_help_describes_a_faithful_stand_in_and_its_bounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="aiobisque serve")
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "faithful stand-in" in text and "Intentional differences" in text
    for option in ("--text-limit BYTES", "--memory-limit BYTES", "--memory-wait SECONDS",
                   "--header-timeout SECONDS", "--hdf-name-clash"):  # fmt: skip
        assert option in text
    assert "413" in text and "503" in text


def test_bound_and_clash_options(tmp_path: Path) -> None:
    args = parse(str(tmp_path), "--text-limit", "1KiB", "--memory-limit", "2MB",
                 "--memory-wait", "3", "--header-timeout", "4", "--hdf-name-clash")  # fmt: skip
    assert (args.text_limit, args.memory_limit, args.memory_wait) == (1024, 2e6, 3)
    assert args.header_timeout == 4
    assert plan_from_args(args).hdf_name_clash is True
    assert plan_from_args(parse(str(tmp_path))).hdf_name_clash is False


def test_serve_applies_the_text_limit(tmp_path: Path) -> None:
    samples.write_array(tmp_path, "vol", "v", (64, 64), dtype="<f4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "aiobisque.server", str(tmp_path), "--public", "vol",
         "--text-limit", "4KiB"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        root = process.stdout.readline().split()[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{root}/table/vol/v/;,;/format:json", timeout=10)
        assert refused.value.code == 413
        refused.value.close()
        with urllib.request.urlopen(f"{root}/table/vol/v/0,;/format:json", timeout=10) as r:
            assert r.status == 200
    finally:
        process.terminate()
        process.communicate(timeout=15)
