"""The command line as real processes: kill -9 and resume, Ctrl-C, bounded memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import aiobisque
from aiobisque.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, main
from aiobisque.server import FaultPlan, TableServer, samples, serve_in_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="POSIX signals, /proc")

PASSWORD = "pr0cess-Pa55-word"
REPO = Path(aiobisque.__file__).resolve().parents[1]
#: 4 MiB volume: 64 requests of 64 KiB, 16 blocks of 256 KiB
SMALL_ARGS = ["--request-mb", "0.0625", "--block-mb", "0.25", "--concurrency", "4",
              "--no-progress"]
#: the 4 MiB download takes at least 8 s, so it is still running when the test acts on it
SLOW = FaultPlan(latency=0.05, total_bandwidth=512 * 1024)
#: every data request from now on waits: the child makes no progress the test did not see
STALLED = FaultPlan(latency=600)
#: the memory test's array is several times the in-flight budget of 4 MiB
BIG_SHAPE = (256, 256, 256)  # float32: 64 MiB


def SAMPLES(path: Path) -> None:
    samples.write_array(path, "vol", "volume", (256, 64, 64), dtype="float32", seed=4)
    samples.write_array(path, "big", "volume", BIG_SHAPE, dtype="float32", seed=5)


SERVER_OPTIONS = {"users": {"carol": PASSWORD}}


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BISQUE_PASSWORD", PASSWORD)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("BISQUE_ROOT", raising=False)


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def start(*argv: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiobisque", *map(str, argv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )


def journaled_blocks(output: Path) -> int:
    journal = output.with_name(output.name + ".part.journal")
    try:
        return journal.read_bytes().count(b'{"block"')
    except FileNotFoundError:
        return 0


def wait_for_blocks(proc: subprocess.Popen[str], output: Path, blocks: int) -> None:
    deadline = time.monotonic() + 30
    while journaled_blocks(output) < blocks:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the download made no progress"
        time.sleep(0.02)


def hold_after_blocks(proc: subprocess.Popen[str], thread_server: TableServer, output: Path,
                      blocks: int) -> None:
    """Wait for ``blocks`` journaled blocks, then stall the server under the child.

    The kill (or Ctrl-C) that follows lands on a download that is provably unfinished,
    however loaded the machine is.
    """
    wait_for_blocks(proc, output, blocks)
    thread_server.faults = STALLED
    assert proc.poll() is None, proc.communicate()
    assert not output.exists() and journaled_blocks(output) < 16


def test_python_m_help() -> None:
    done = subprocess.run([sys.executable, "-m", "aiobisque", "--help"], capture_output=True,
                          text=True, env=child_env(), timeout=60)
    assert done.returncode == 0 and "usage: aiobisque" in done.stdout
    assert "download" in done.stdout and "exit status:" in done.stdout


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_kill_9_then_resume(thread_server: TableServer, folder: Path, tmp_path: Path,
                            suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"v{suffix}"
    argv = ["download", thread_server.root, "vol", "volume", "-o", out, "--user", "carol", *SMALL_ARGS]
    thread_server.faults = SLOW
    try:
        proc = start(*argv)
        try:
            hold_after_blocks(proc, thread_server, out, 3)
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                assert PASSWORD.encode() not in f.read()  # never in the process list
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL and PASSWORD not in err
    finally:
        thread_server.faults = FaultPlan()
    assert not out.exists() and out.with_name(out.name + ".part").exists()
    saved = journaled_blocks(out)

    thread_server.stats.reset()
    assert main([str(a) for a in argv]) == EXIT_OK
    resumed_requests = thread_server.stats.requests["data"]
    summary = capsys.readouterr().out
    # the summary tells fetched from already-saved bytes (and the rate counts only the first)
    kept = saved * 256 * 1024  # a block: 16 planes of 64x64 float32
    fetched = 4 * 1024 * 1024 - kept
    assert f"fetched {fetched / 1024 / 1024:.1f} MiB in " in summary
    assert f"resumed: {kept / 1024:.1f} KiB were already saved ({saved}/16 blocks)" in summary
    assert 0 < resumed_requests <= 64 - 4 * saved  # 4 requests per saved block were not redone
    want = samples.expected(samples.resource_file(folder, "vol"), "volume")
    if suffix == ".npy":
        got = np.load(out)
    else:
        with h5py.File(out, "r") as f:
            got = f["volume"][()]
    assert got.tobytes() == want.tobytes()
    assert not out.with_name(out.name + ".part.journal").exists()


def test_changed_remote_after_kill_is_detected(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "vol", "volume", (256, 64, 64), dtype="float32", seed=4)
    out = tmp_path / "v.npy"
    with serve_in_thread(remote, users={"carol": PASSWORD}, faults=SLOW) as thread_server:
        argv = ["download", thread_server.root, "vol", "volume", "-o", out, "--user", "carol",
                *SMALL_ARGS]
        proc = start(*argv)
        try:
            hold_after_blocks(proc, thread_server, out, 2)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        assert out.with_name("v.npy.part").exists() and not out.exists()
        # the new version replaces the file whole: a server thread may still be reading the
        # old one for a request of the killed child, and HDF5 refuses to rewrite an open file
        staging = tmp_path / "staging"
        staging.mkdir()
        samples.write_array(staging, "vol", "volume", (128, 64, 64), dtype="int16", seed=6)
        os.replace(samples.resource_file(staging, "vol"), samples.resource_file(remote, "vol"))
        thread_server.faults = FaultPlan()
        assert main([str(a) for a in argv]) == EXIT_FAILED
        err = capsys.readouterr().err
        assert "the remote array vol/volume changed" in err
        assert "(256, 64, 64) float32" in err and "(128, 64, 64) int16" in err
        assert err.count("\n") == 1 and "rerun with --restart" in err
        assert main([str(a) for a in argv] + ["--restart"]) == EXIT_OK
    want = samples.expected(samples.resource_file(remote, "vol"), "volume")
    assert np.array_equal(np.load(out), want)


def test_ctrl_c_keeps_the_part_file(thread_server: TableServer, tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    thread_server.faults = SLOW
    try:
        proc = start("download", thread_server.root, "vol", "volume", "-o", out, "--user", "carol",
                     *SMALL_ARGS)
        try:
            hold_after_blocks(proc, thread_server, out, 1)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    finally:
        thread_server.faults = FaultPlan()
    assert proc.returncode == EXIT_INTERRUPTED
    assert "interrupted; partial downloads are kept" in err and "Traceback" not in err
    assert out.with_name("v.npy.part").exists() and journaled_blocks(out) >= 1


# The resident size when the download starts and the process's peak, in KiB, from
# /proc/self/status: unlike ru_maxrss, VmHWM is not inherited from the forking parent (here
# pytest with the server and its data), so it measures this process alone.
_MEASURE = """
import re, sys
from aiobisque.cli import main

def status(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1))

before = status("VmRSS")
code = main(sys.argv[1:])
print(code, before, status("VmHWM"))
"""


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_memory_stays_bounded(thread_server: TableServer, folder: Path, tmp_path: Path,
                              suffix: str) -> None:
    """A 64 MiB download with a 4 MiB in-flight budget grows the process by far less."""
    out = tmp_path / f"big{suffix}"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, "download", thread_server.root, "big", "volume", "-o",
         str(out), "--user", "carol", "--request-mb", "1", "--inflight-mb", "4",
         "--concurrency", "4", "--no-progress"],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status, before, after = map(int, done.stdout.split()[-3:])
    growth_mib = (after - before) / 1024
    array_mib = np.prod(BIG_SHAPE) * 4 / 2**20
    assert status == EXIT_OK
    assert growth_mib < array_mib / 2, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert out.stat().st_size >= array_mib * 2**20
