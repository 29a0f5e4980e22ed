"""Registries for the image tests: the real local one (what `make registry` starts, through the
same script), a second real docker-registry with basic auth, and helpers that push hand-made
images to a registry through its HTTP API."""

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_SCRIPT = REPO_ROOT / "scripts" / "registry" / "registry.py"
LOCAL_REGISTRY = "127.0.0.1:5000"
HELLO = f"{LOCAL_REGISTRY}/gantry/hello:latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _script(*args: str) -> str:
    done = subprocess.run([sys.executable, str(REGISTRY_SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"registry.py {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _registry(*args: str) -> None:
    _script(*args, "--state-dir", os.environ.get("STATE_DIR", str(REPO_ROOT / ".state")))


@pytest.fixture(scope="session")
def local_registry() -> str:
    """127.0.0.1:5000 answering with gantry/hello:latest pushed, as after `make registry`."""
    _registry("up", "--addr", LOCAL_REGISTRY)
    _registry("push-hello", "--registry", LOCAL_REGISTRY)
    return LOCAL_REGISTRY


@dataclass(frozen=True)
class AuthRegistry:
    addr: str
    user: str
    password: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> AuthRegistry:
    """A second docker-registry, with an htpasswd file, holding gantry/hello:latest."""
    state = tmp_path_factory.mktemp("auth-registry")
    user, password = "alice", secrets.token_urlsafe(12)
    (state / "htpasswd").write_text(_script("htpasswd", user, password, "--cost", "4"))
    (state / "creds").write_text(f"{user}:{password}")
    addr = f"127.0.0.1:{_free_port()}"
    try:
        _script("up", "--state-dir", str(state), "--name", "auth", "--addr", addr,
                "--htpasswd", str(state / "htpasswd"))
        _script("push-hello", "--state-dir", str(state), "--registry", addr,
                "--creds-file", str(state / "creds"))
        yield AuthRegistry(addr, user, password)
    finally:
        _script("stop", "--state-dir", str(state), "--name", "auth")


class FakeRegistry:
    """Serves fixed bytes per path the way docker-registry answers GETs (Content-Type, the
    registry/2.0 header, 404 with a MANIFEST_UNKNOWN error body), so a test can hand the real
    client what a real registry never sends, such as a blob that does not match its digest.
    With `token` set it also plays Docker Hub's token auth: a request without that bearer
    token gets a `WWW-Authenticate: Bearer realm=.../token` challenge, and /token hands the
    token out to anyone (or, with `token_basic` set, only to that `user:password`). `realm`
    replaces the token service's URL in the challenge; `redirects` answers a path with a 307 to
    another URL, as registries send blob downloads to their storage."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.redirects: dict[str, str] = {}
        self.addr = ""
        self.realm: str | None = None
        self.token: str | None = None
        self.token_basic: str | None = None
        self.token_requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.addr = "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self.addr

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def serve_image(self, repo: str, tag: str, parts: dict) -> None:
        parts = dict(parts)
        self.routes[f"/v2/{repo}/manifests/{tag}"] = (OCI_MANIFEST, parts.pop("manifest"))
        for digest, data in parts.items():
            self.routes[f"/v2/{repo}/blobs/{digest}"] = ("application/octet-stream", data)

    def _answer(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        path, _, query = target.partition("?")
        if path == "/token":
            self.token_requests.append(query)
            expected = self.token_basic and "Basic " + base64.b64encode(self.token_basic.encode()).decode()
            if expected and headers.get("authorization") != expected:
                return 401, {}, b'{"details":"incorrect username or password"}'
            return 200, {}, json.dumps({"token": self.token}).encode()
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            challenge = f'Bearer realm="{self.realm or f"http://{self.addr}/token"}",service="fake-registry"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        if path in self.redirects:
            return 307, {"Location": self.redirects[path]}, b""
        if path in self.routes:
            ctype, body = self.routes[path]
            return 200, {"Content-Type": ctype}, body
        if path == "/v2/":
            return 200, {}, b"{}"
        return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                status, extra, body = self._answer(target, headers)
                extra.setdefault("Content-Type", "application/json")
                head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                head += f"Content-Length: {len(body)}\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\r\n"
                writer.write(head.encode() + (b"" if method == "HEAD" else body))
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def fake_registry() -> FakeRegistry:
    registry = FakeRegistry()
    await registry.start()
    yield registry
    await registry.stop()


# -- hand-made images ------------------------------------------------------------------------------

def layer(*entries: tuple) -> bytes:
    """A gzip layer from (name, kind, payload, mode[, (uid, gid)]) entries: kind is "file"
    (payload bytes), "dir", "symlink" or "hardlink" (payload = link target), "chardev"
    (payload = (major, minor)) or "fifo"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode, *owner in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1704067200
            if owner:
                info.uid, info.gid = owner[0]
            data = None
            if kind == "file":
                info.size, data = len(payload), io.BytesIO(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "chardev":
                info.type, (info.devmajor, info.devminor) = tarfile.CHRTYPE, payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, data)
    return gzip.compress(buf.getvalue(), mtime=0)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _plain(data: bytes) -> bytes:
    if data.startswith(ZSTD_MAGIC):
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    return gzip.decompress(data)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_parts(layers: list[bytes], *, arch: str = "amd64", config: dict | None = None) -> dict:
    """{digest: bytes} of config and layers, plus "manifest" (bytes) of an OCI image."""
    config_doc = {"architecture": arch, "os": "linux",
                  "config": config or {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [digest_of(_plain(b)) for b in layers]}}
    config_bytes = json.dumps(config_doc).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digest_of(config_bytes), "size": len(config_bytes)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+"
                                         + ("zstd" if b.startswith(ZSTD_MAGIC) else "gzip"),
                            "digest": digest_of(b), "size": len(b)} for b in layers]}
    parts = {digest_of(b): b for b in [config_bytes, *layers]}
    parts["manifest"] = json.dumps(manifest).encode()
    return parts


async def push_image(registry: str, repo: str, tag: str, layers: list[bytes], *,
                     arch: str = "amd64", config: dict | None = None) -> str:
    """Push an image through the registry API (monolithic uploads); returns its digest."""
    parts = image_parts(layers, arch=arch, config=config)
    manifest = parts.pop("manifest")
    async with httpx.AsyncClient(base_url=f"http://{registry}/v2/{repo}") as http:
        for digest, data in parts.items():
            started = await http.post("/blobs/uploads/")
            assert started.status_code == 202, started.text
            # The upload URL carries its own state in the query: add to it, do not replace it.
            url = httpx.URL(started.headers["location"]).copy_merge_params({"digest": digest})
            done = await http.put(url, content=data, headers={"Content-Type": "application/octet-stream"})
            assert done.status_code == 201, done.text
        await put_manifest(http, tag, manifest, OCI_MANIFEST)
    return digest_of(manifest)


async def push_index(registry: str, repo: str, tag: str, entries: list[tuple[str, str]]) -> str:
    """Push an OCI index of (architecture, manifest digest) entries already in `repo`."""
    async with httpx.AsyncClient(base_url=f"http://{registry}/v2/{repo}") as http:
        manifests = []
        for arch, digest in entries:
            head = await http.head(f"/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
            assert head.status_code == 200, (arch, digest)
            manifests.append({"mediaType": OCI_MANIFEST, "digest": digest,
                              "size": int(head.headers["content-length"]),
                              "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
        await put_manifest(http, tag, index, OCI_INDEX)
    return digest_of(index)


async def put_manifest(http: httpx.AsyncClient, tag: str, body: bytes, media_type: str) -> None:
    response = await http.put(f"/manifests/{tag}", content=body, headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text
