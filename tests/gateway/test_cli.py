"""`python -m gateway run` refuses a bad start before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *changes: str, token: str = "t" * 32) -> subprocess.CompletedProcess:
    (tmp_path / "token").write_text(token)
    argv = {"--state-dir": str(tmp_path / "state"), "--cert": str(tmp_path / "gateway.pem"),
            "--https-bind": "127.0.0.1:1", "--http-bind": "127.0.0.1:2", "--control-bind": "127.0.0.1:3",
            "--token-file": str(tmp_path / "token")}
    for change in changes:
        name, _, value = change.partition("=")
        argv[name] = value
    return subprocess.run([sys.executable, "-m", "gateway", "run", *[x for kv in argv.items() for x in kv]],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("token", ["", "short", "has a space in it, long enough", "é" * 20])
def test_a_weak_or_odd_token_is_refused(tmp_path, token):
    result = run(tmp_path, token=token)
    assert result.returncode == 2
    assert "token must be at least 16 printable ASCII characters" in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("change,message", [
    ("--https-bind=localhost:443", "not an IP address literal"),
    ("--control-bind=127.0.0.1", "not ADDR:PORT"),
    ("--public-https-port=0", "not a port"),
])
def test_a_bad_address_is_refused(tmp_path, change, message):
    result = run(tmp_path, change)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_missing_haproxy_is_refused(tmp_path):
    result = run(tmp_path, f"--haproxy={tmp_path / 'no-haproxy'}")
    assert result.returncode == 2
    assert "no such executable" in result.stderr


def test_a_state_dir_haproxy_could_not_be_told_is_refused(tmp_path):
    result = run(tmp_path, f"--state-dir={tmp_path / 'my state'}")
    assert result.returncode == 2
    assert "absolute path of letters, digits" in result.stderr
    assert not (tmp_path / "my state").exists()


@pytest.mark.parametrize("changes,message", [
    (("--tcp-bind=127.0.0.1",), "--tcp-bind and --tcp-ports go together"),
    (("--tcp-ports=20000-20999",), "--tcp-bind and --tcp-ports go together"),
    (("--tcp-bind=127.0.0.1", "--tcp-ports=20999-20000"), "not LO-HI"),
    (("--tcp-bind=127.0.0.1", "--tcp-ports=1-65535"), "at most 10000"),
    (("--tcp-bind=localhost", "--tcp-ports=20000-20999"), "not an IP address literal"),
    (("--tcp-bind=127.0.0.1", "--tcp-ports=1-100"), "holds the port of --https-bind 127.0.0.1:1"),
    (("--tcp-bind=127.0.0.1", "--tcp-ports=3-3"), "holds the port of --control-bind 127.0.0.1:3"),
])
def test_a_tcp_frontend_half_given_or_clashing_is_refused(tmp_path, changes, message):
    result = run(tmp_path, *changes)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "state").exists()


def test_the_help_names_the_tcp_options():
    result = subprocess.run([sys.executable, "-m", "gateway", "run", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "--tcp-bind ADDR" in result.stdout and "--tcp-ports LO-HI" in result.stdout
