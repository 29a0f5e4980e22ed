"""`gantry-agent join` (nodes/agent/join.py) against a real HTTP server playing the plane's
join endpoint, and `gantry-agent run` on a node that never joined."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodes.agent import cli
from nodes.agent.join import CREDENTIAL_FILE, Credential, agent_ws_url, read_credential, write_credential
from tests.agent.plane import make_runtime

CREDENTIAL = "gnode_abcdefghijklmnopqrstuvwxyz012345"


class JoinEndpoint(BaseHTTPRequestHandler):
    """POST /api/v1/nodes/join as the plane answers it: 201 with the credential for the one
    valid token, an RFC 9457 problem for any other."""

    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Content-Type"), body))
        if self.path == "/api/v1/nodes/join" and body.get("token") == "good-token":
            self._answer(201, "application/json", {"node_id": 7, "hostname": body["inventory"]["hostname"],
                                                   "credential": CREDENTIAL})
        else:
            self._answer(401, "application/problem+json",
                         {"type": "about:blank", "title": "Unauthorized", "status": 401,
                          "detail": "join token is invalid, already used or expired"})

    def _answer(self, status, content_type, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def join_server():
    JoinEndpoint.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), JoinEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fake_runtime(monkeypatch):
    """The accelerator comes from the runtime's probe; here from the fakes, not a kit build."""
    monkeypatch.setattr(cli, "runtime_from_args", lambda args, gpus=None: make_runtime(args.data_dir))


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, out.splitlines()


def test_join_stores_the_credential_0600_and_prints_the_node_id_only(join_server, tmp_path, capsys):
    data = tmp_path / "data"
    code, lines = run_cli(capsys, "join", "--url", join_server + "/", "--token", "good-token", "--data-dir", str(data))
    assert code == 0 and len(lines) == 1
    printed = json.loads(lines[0])
    assert printed["node_id"] == 7 and CREDENTIAL not in lines[0]
    path = data / CREDENTIAL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": join_server, "node_id": 7, "credential": CREDENTIAL}
    assert sorted(p.name for p in data.iterdir()) == [CREDENTIAL_FILE]  # no temp file left behind

    ((where, content_type, body),) = JoinEndpoint.requests
    assert where == "/api/v1/nodes/join" and content_type == "application/json" and body["token"] == "good-token"
    inventory = body["inventory"]
    assert inventory["accelerator"] == "tcg" and inventory["simulated"] is False and inventory["gpus"] == []
    assert inventory["cpus"] >= 1 and inventory["memory_mib"] > 0 and inventory["disk_gib"] >= 0
    assert inventory["hostname"] == socket.gethostname()
    assert read_credential(data) == Credential(join_server, 7, CREDENTIAL)


@pytest.mark.parametrize("token", ["wrong-token", "used-token", "expired-token"])
def test_a_refused_token_gives_one_line_and_exit_1(join_server, tmp_path, capsys, token):
    code, lines = run_cli(capsys, "join", "--url", join_server, "--token", token, "--data-dir", str(tmp_path))
    assert code == 1 and len(lines) == 1
    error = json.loads(lines[0])["error"]
    assert error == "join refused (HTTP 401): join token is invalid, already used or expired"
    assert not (tmp_path / CREDENTIAL_FILE).exists()


def test_an_unreachable_plane_gives_one_line_and_exit_1(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, lines = run_cli(capsys, "join", "--url", f"http://127.0.0.1:{port}", "--token", "t", "--data-dir", str(tmp_path))
    assert code == 1 and len(lines) == 1
    assert json.loads(lines[0])["error"].startswith(f"cannot reach the control plane at http://127.0.0.1:{port}")


def test_a_url_that_is_not_http_is_refused_before_anything_is_built(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "runtime_from_args", lambda args: pytest.fail("built a runtime"))
    code, lines = run_cli(capsys, "join", "--url", "ws://127.0.0.1:8000", "--token", "t", "--data-dir", str(tmp_path))
    assert code == 1 and "base URL" in json.loads(lines[0])["error"]


def test_run_on_a_node_that_never_joined_says_so_in_one_line(tmp_path, capsys):
    code, lines = run_cli(capsys, "run", "--data-dir", str(tmp_path))
    assert code == 1 and len(lines) == 1
    assert "has not joined" in json.loads(lines[0])["error"] and "gantry-agent join" in lines[0]


def test_the_credential_file_is_never_readable_by_others_even_while_written(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0)  # even with no umask to help
    try:
        write_credential(tmp_path, Credential("http://127.0.0.1:8000", 1, "gnode_x"))
        write_credential(tmp_path, Credential("http://127.0.0.1:8000", 2, "gnode_y"))  # a re-join replaces it
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600] and stat.S_IMODE((tmp_path / CREDENTIAL_FILE).stat().st_mode) == 0o600
    assert read_credential(tmp_path).node_id == 2
    assert "gnode_y" not in repr(read_credential(tmp_path))


def test_the_agent_socket_url_follows_the_base_url():
    assert agent_ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/v1/agent/"
    assert agent_ws_url("https://127.0.0.1:8443/gantry/") == "wss://127.0.0.1:8443/gantry/ws/v1/agent/"
