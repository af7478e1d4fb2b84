"""Fault injection with real faults: a full disk (a small tmpfs), a read-only file system and
signals at spread points of a sweep. Whatever happens, the result folder holds one run — the
old one byte for byte, or the new one whole — and the command says so in one line, without a
traceback. The tmpfs cases need root (mount); elsewhere they are skipped with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _servesim(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (unmounted after)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("the full-disk cases mount a tmpfs, which needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    text = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "Traceback" not in proc.stderr, proc.stderr
    assert text.count("error:") == 1, proc.stderr
    for w in words:
        assert w in text, proc.stderr


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_a_full_disk_keeps_the_previous_result_and_says_so(tiny_disk, stream):
    """GIVEN a result that fits on a 1 MiB disk WHEN a larger run (3,000 requests: a few MB of
    tables and report) is written over it THEN exit 2, one line naming the full disk, the old
    result byte for byte, and no staging, previous or partial file left on the disk."""
    out = tiny_disk / "r"
    small = _servesim("run", "--num-requests", "20", "--no-plots", "-q", "-o", str(out))
    assert small.returncode == 0, small.stderr
    before = _files(out)
    big = _servesim("run", "--num-requests", "3000", "-q", "-o", str(out), *(["--stream"] if stream else []))
    assert big.returncode == 2, big.stderr
    _one_line_error(big, "error: No space left on device", "previous result folder is unchanged")
    assert _files(out) == before
    assert [p.name for p in tiny_disk.iterdir()] == ["r"], "nothing but the old result on the disk"


def test_a_read_only_file_system_is_refused_before_simulating(tiny_disk):
    """A read-only mount (root cannot write there either) is exit 2 before any simulation."""
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    res = _servesim("run", "--num-requests", "200000", "-q", "-o", str(tiny_disk / "r"))  # minutes, if it simulated
    assert res.returncode == 2, res.stderr
    _one_line_error(res, "cannot write results there", "Read-only file system")
    assert "simulated" not in res.stderr


SWEEP = ["sweep", "--rates", "4,8,12", "--num-requests", "1500", "--workers", "2", "-q", "--no-plots"]


def test_signals_at_spread_points_of_a_sweep_leave_the_old_result_or_the_new_one_whole(tmp_path):
    """GIVEN a finished sweep in a folder WHEN another sweep (another seed) into it gets SIGTERM
    or SIGINT at 10 %, 30 %, ..., 110 % of its usual duration THEN it either stopped (exit
    143 / 130, or killed before its handlers were installed) and the folder holds the old
    sweep byte for byte, or it finished and the folder holds the new sweep whole — the same
    files as an uninterrupted run of it (exit 0, or 143 / 130 saying the run was complete when
    the signal came after its commit); never a mix, never a leftover folder, never a
    traceback. (Before signals were held back during the commit, a signal there left the
    target missing, and one just after it printed "left as it was" over the new result.)"""
    out = tmp_path / "sw"
    t0 = time.monotonic()
    first = _servesim(*SWEEP, "-o", str(out))
    duration = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    old = _files(out)
    refs = {}
    for seed in ("7", "8"):
        ref = _servesim(*SWEEP, "--seed", seed, "-o", str(tmp_path / f"ref{seed}"))
        assert ref.returncode == 0, ref.stderr
        refs[seed] = _files(tmp_path / f"ref{seed}")
        assert set(refs[seed]) == set(old) and refs[seed] != old
    outcomes = []
    for i, frac in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 1.1)):
        sig = (signal.SIGTERM, signal.SIGINT)[i % 2]
        seed = ("7", "8")[i % 2]  # each round writes a sweep other than the folder's
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim", *SWEEP, "--seed", seed, "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            time.sleep(frac * duration)
            if proc.poll() is None:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                leftover = True
            except ProcessLookupError:
                leftover = False
        assert not leftover, "processes of the servesim session were still running"
        assert "Traceback" not in err, err
        now = _files(out)
        said = " ".join(err.split())
        if now == refs[seed]:  # the new sweep, whole; a signal after its commit says so
            # exit 0; or 143 / 130 saying the run was complete (the signal came after the
            # commit); or killed by the signal's default action once the CLI had returned
            ok_codes = proc.returncode in (0, -signal.SIGINT, -signal.SIGTERM) or (proc.returncode in (130, 143) and "after the run was complete" in said)
            assert ok_codes, (frac, proc.returncode, err)
            outcomes.append("new")
            old = now
        else:
            assert now == old, f"at {frac:.0%}: neither the old result nor the new one whole"
            assert proc.returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM), (frac, proc.returncode, err)
            assert proc.returncode < 0 or "left as it was" in said, err
            outcomes.append("stopped")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ref7", "ref8", "sw"], f"at {frac:.0%}: a staging or previous folder was left"
        assert json.loads((out / "summary.json").read_text())  # whole and parseable
    assert "stopped" in outcomes, outcomes


def test_a_signal_during_the_commit_waits_until_the_new_result_is_in_place(tmp_path, monkeypatch):
    """Ctrl-C exactly between the commit's two renames (old result aside, new one into place)
    is held back until both are done: the folder then holds the new result whole, nothing is
    left aside, and the message says the run was complete (exit 130). Unblocked, the
    interrupt would land between the renames and leave no result at the target."""
    from click.testing import CliRunner

    from sim.cli import common
    from sim.cli.main import main

    out = tmp_path / "r"
    base = ["run", "--cost-model", "linear", "-q", "--no-plots", "-o", str(out)]
    assert CliRunner().invoke(main, [*base, "--num-requests", "10"]).exit_code == 0
    real_rename = Path.rename
    calls = []

    def rename(self, target):
        result = real_rename(self, target)
        calls.append(Path(target).name)
        if len(calls) == 1:  # the old result was moved aside: the target is absent now
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(common.Path, "rename", rename)
    res = CliRunner().invoke(main, [*base, "--num-requests", "12"])
    assert len(calls) == 2, calls
    assert res.exit_code == 130, res.output
    assert "after the run was complete" in " ".join(res.output.split())
    assert json.loads((out / "summary.json").read_text())["runs"][0]["summary"]["num_requests"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["r"], "nothing left aside"
