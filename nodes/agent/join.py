"""Joining: trade a one-time join token for this node's long-lived credential.

`POST <base>/api/v1/nodes/join` with `{"token": ..., "inventory": {...}}`; the plane answers 201
`{"node_id", "hostname", "credential"}` or an RFC 9457 problem. The credential is the node's
only secret: it is written once to `<data_dir>/credential.json` with mode 0600 from the first
byte (a temp file opened 0600, then renamed over), and never printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from nodes.agent.errors import AgentError
from protocol.wire import Inventory

CREDENTIAL_FILE = "credential.json"
JOIN_PATH = "/api/v1/nodes/join"
AGENT_WS_PATH = "/ws/v1/agent/"
JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Credential:
    url: str
    node_id: int
    credential: str

    def __repr__(self) -> str:  # a credential in a traceback or log line is a leaked credential
        return f"Credential(url={self.url!r}, node_id={self.node_id}, credential='***')"


def normalize_base(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AgentError(f"--url must be the control plane's http(s) base URL, e.g. http://127.0.0.1:8000, not {url!r}",
                         permanent=True)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def agent_ws_url(base: str) -> str:
    """http://h:p/prefix -> ws://h:p/prefix/ws/v1/agent/ (https -> wss)."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + AGENT_WS_PATH, "", ""))


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key][:200]
    return response.reason_phrase


async def request_join(base: str, token: str, inventory: Inventory, *, timeout: float = JOIN_TIMEOUT_S) -> Credential:
    """Raises AgentError with one readable sentence for a refused token or an unreachable plane."""
    url = normalize_base(base)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url + JOIN_PATH, json={"token": token, "inventory": asdict(inventory)})
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise AgentError(f"cannot reach the control plane at {url}: {reason}") from None
    if response.status_code != 201:
        detail = _problem_detail(response)
        if response.status_code in (400, 401, 403):
            raise AgentError(f"join refused (HTTP {response.status_code}): {detail}", permanent=True)
        raise AgentError(f"join failed (HTTP {response.status_code}): {detail}")
    try:
        body = response.json()
        node_id, credential = body["node_id"], body["credential"]
    except (ValueError, KeyError, TypeError):
        raise AgentError("the control plane's join answer is not the expected JSON") from None
    if not isinstance(node_id, int) or isinstance(node_id, bool) or not isinstance(credential, str) or not credential:
        raise AgentError("the control plane's join answer has no node_id or credential")
    return Credential(url=url, node_id=node_id, credential=credential)


def write_credential(data_dir: Path, cred: Credential) -> Path:
    """Blocking; call through asyncio.to_thread."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / CREDENTIAL_FILE
    tmp = data_dir / f".{CREDENTIAL_FILE}.{os.getpid()}.tmp"
    # O_EXCL: a leftover temp file (or a planted link) is never reused with its old mode.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (json.dumps(asdict(cred), sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_credential(data_dir: Path) -> Credential:
    """Blocking; call through asyncio.to_thread. A node that never joined gets one sentence."""
    path = Path(data_dir) / CREDENTIAL_FILE
    try:
        data = json.loads(path.read_text())
        cred = Credential(url=normalize_base(data["url"]), node_id=int(data["node_id"]),
                          credential=str(data["credential"]))
    except FileNotFoundError:
        raise AgentError(f"this node has not joined: no {path}; run `gantry-agent join --url URL --token TOKEN` first",
                         permanent=True) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"{path} is unreadable ({type(exc).__name__}); join again", permanent=True) from None
    return cred


async def join(base: str, token: str, data_dir: Path, inventory: Inventory) -> tuple[Credential, Path]:
    cred = await request_join(base, token, inventory)
    path = await asyncio.to_thread(write_credential, data_dir, cred)
    return cred, path
