"""A Docker Registry HTTP API v2 / OCI distribution client: manifests and blobs, pull only.

Auth follows the registry's challenge: a `WWW-Authenticate: Bearer realm=...` answer sends us
to the token service (anonymously, or with the basic credentials we hold), `Basic` means the
credentials go on every request. Blobs are hashed while they stream to disk and only renamed
into the cache once their sha256 matches the digest the manifest promised. HEAD requests
(`check_manifest`, `has_blob`) ask whether this pull, with its credentials, may have what the
node already holds. Digests reach a URL or a path only as checked `Digest`s (digest.py).
"""

import asyncio
import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from nodes.agent.errors import ImageError
from nodes.agent.oci.digest import Digest
from nodes.agent.oci.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit; more is not a manifest
WRITE_CHUNK = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _reason(exc: BaseException) -> str:
    """A short cause: httpx says "All connection attempts failed" where the OS error it wraps
    says "Connection refused"."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)  # asyncio's strerror is "Connect call failed (...)"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror  # resolver errors: "Name or service not known"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class RegistryClient:
    """One repository on one registry, for the duration of a pull."""

    def __init__(self, http: httpx.AsyncClient, ref: Reference, *, insecure: bool,
                 credentials: tuple[str, str] | None):
        self._http = http
        self._ref = ref
        self._base = f"{'http' if insecure else 'https'}://{ref.endpoint}/v2/{ref.repository}"
        self._credentials = credentials
        self._authorization: str | None = None

    # -- requests and auth -------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> ImageError:
        return ImageError(f"registry {self._ref.endpoint} is unreachable: {_reason(exc)}")

    async def _send(self, url: str, *, accept: str | None = None, stream: bool = False,
                    method: str = "GET") -> httpx.Response:
        for attempt in range(2):
            headers = {"Accept": accept} if accept else {}
            if self._authorization:
                headers["Authorization"] = self._authorization
            request = self._http.build_request(method, url, headers=headers)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            if not await self._authenticate(challenge):
                return response
        raise AssertionError("unreachable")

    def _basic(self) -> str:
        user, password = self._credentials or ("", "")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def _authenticate(self, challenge: str) -> bool:
        """Act on a 401 challenge; False when there is nothing new to try."""
        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        if scheme == "basic":
            if self._credentials is None or self._authorization:
                return False
            self._authorization = self._basic()
            return True
        if scheme != "bearer" or "realm" not in params:
            raise ImageError(f"registry {self._ref.endpoint} asks for an unsupported "
                             f"authentication scheme ({challenge[:60]!r})", permanent=True)
        if self._authorization:
            return False  # a token we already hold was refused: more tokens will not help
        query = {"scope": params.get("scope") or f"repository:{self._ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": self._basic()} if self._credentials else {}
        try:
            response = await self._http.get(params["realm"], params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise ImageError(f"token service of registry {self._ref.endpoint} is unreachable: "
                             f"{_reason(exc)}") from None
        if response.status_code in (401, 403):
            raise self._unauthorized()
        if response.status_code != 200:
            raise ImageError(f"token service of registry {self._ref.endpoint} answered HTTP "
                             f"{response.status_code}", permanent=response.status_code < 500)
        try:
            body = response.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise ImageError(f"token service of registry {self._ref.endpoint} sent no token",
                             permanent=True) from None
        self._authorization = f"Bearer {token}"
        return True

    def _unauthorized(self) -> ImageError:
        if self._credentials:
            return ImageError(f"registry {self._ref.endpoint} rejected the credentials for "
                              f"{self._ref.repository}", permanent=True)
        return ImageError(f"registry {self._ref.endpoint} requires credentials for "
                          f"{self._ref.repository} (or the repository does not exist)", permanent=True)

    def _error(self, response: httpx.Response, what: str) -> ImageError:
        status = response.status_code
        if status == 401:
            return self._unauthorized()
        if status == 403:
            return ImageError(f"registry {self._ref.endpoint} denied access to {self._ref.repository}",
                              permanent=True)
        if status == 404:
            code = ""
            try:
                code = response.json()["errors"][0]["code"]
            except (ValueError, KeyError, IndexError, TypeError, httpx.ResponseNotRead):
                pass
            if code == "NAME_UNKNOWN":
                return ImageError(f"repository {self._ref.name} not found", permanent=True)
            if code == "MANIFEST_UNKNOWN":
                return ImageError(f"{what} not found (the registry has no such tag or digest)",
                                  permanent=True)
            return ImageError(f"{what} not found", permanent=True)
        if status == 429:
            return ImageError(f"registry {self._ref.endpoint} is rate limiting pulls (HTTP 429)")
        return ImageError(f"registry {self._ref.endpoint} answered HTTP {status} for {what}",
                          permanent=status < 500)

    # -- manifests ---------------------------------------------------------------------------

    async def manifest(self, reference: str | Digest, what: str) -> tuple[dict, Digest]:
        """GET a manifest or index by tag or digest; returns (document, its digest). A digest
        must come as a Digest: a string with a colon is neither a tag nor a checked digest."""
        if ":" in reference and not isinstance(reference, Digest):
            raise TypeError("a manifest is fetched by tag or by a checked Digest")
        response = await self._send(f"{self._base}/manifests/{reference}", accept=ACCEPT)
        if response.status_code != 200:
            raise self._error(response, what)
        body = response.content
        if len(body) > MAX_MANIFEST_BYTES:
            raise ImageError(f"{what}: manifest is larger than 4 MiB", permanent=True)
        digest = Digest.of_hex(hashlib.sha256(body).hexdigest())
        if isinstance(reference, Digest) and digest != reference:
            raise ImageError(f"{what}: manifest digest mismatch (expected {reference}, got "
                             f"{digest})", permanent=True)
        try:
            document = json.loads(body)
        except ValueError:
            raise ImageError(f"{what}: the registry sent a manifest that is not JSON",
                             permanent=True) from None
        if not isinstance(document, dict):
            raise ImageError(f"{what}: the manifest is not a JSON object", permanent=True)
        if document.get("schemaVersion") == 1:
            raise ImageError(f"{what} uses Docker schema 1 manifests, which are not supported; "
                             "push it again with a current Docker or skopeo", permanent=True)
        document.setdefault("mediaType", response.headers.get("content-type", "").split(";")[0])
        return document, digest

    async def check_manifest(self, digest: Digest, what: str) -> None:
        """HEAD the manifest `digest` with this client's credentials: does the registry let
        this pull have it? Raises the registry's answer (401: credentials needed, 404, 5xx)."""
        response = await self._send(f"{self._base}/manifests/{Digest(digest)}", accept=ACCEPT, method="HEAD")
        if response.status_code != 200:
            raise self._error(response, what)

    # -- blobs -------------------------------------------------------------------------------

    async def _head_blob(self, digest: Digest) -> httpx.Response:
        return await self._send(f"{self._base}/blobs/{Digest(digest)}", method="HEAD")

    async def has_blob(self, digest: Digest) -> bool:
        """True when the registry answers a HEAD of the blob in this repository with 200: a
        blob the node holds is used for this pull only if this repository serves it too."""
        return (await self._head_blob(digest)).status_code == 200

    async def check_blob(self, digest: Digest) -> None:
        """has_blob, raising the registry's answer (404: not found, 5xx: transient) instead."""
        response = await self._head_blob(digest)
        if response.status_code != 200:
            raise self._error(response, f"blob {digest} of {self._ref.name}")

    async def fetch_blob(self, digest: Digest, size: int, dest: Path,
                         on_bytes: Callable[[int], None]) -> None:
        """Stream blob `digest` into `dest` (atomically), verifying size and sha256."""
        digest = Digest(digest)
        response = await self._send(f"{self._base}/blobs/{digest}", stream=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(response):x}.part")
        hasher = hashlib.sha256()
        received = 0
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error(response, f"blob {digest} of {self._ref.name}")
            handle = await asyncio.to_thread(open, tmp, "wb")
            try:
                buffer = bytearray()
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > size:
                        raise self._mismatch(digest, f"more than the {size} bytes announced")
                    buffer += chunk
                    if len(buffer) >= WRITE_CHUNK:
                        await asyncio.to_thread(_write, handle, hasher, bytes(buffer))
                        buffer.clear()
                        on_bytes(received)
                if buffer:
                    await asyncio.to_thread(_write, handle, hasher, bytes(buffer))
                    on_bytes(received)
            finally:
                await asyncio.to_thread(handle.close)
            got = "sha256:" + hasher.hexdigest()
            if received != size or got != digest:
                raise self._mismatch(digest, f"got {received} bytes with digest {got}")
            await asyncio.to_thread(os.replace, tmp, dest)
        except httpx.HTTPError as exc:
            raise ImageError(f"download of blob {digest} from {self._ref.endpoint} failed: "
                             f"{_reason(exc)}") from None
        finally:
            await response.aclose()
            await asyncio.to_thread(tmp.unlink, missing_ok=True)

    def _mismatch(self, digest: str, detail: str) -> ImageError:
        # Permanent: over HTTPS a corrupted transfer would fail TLS, so a wrong blob means the
        # registry serves wrong content; retrying gets the same bytes. The partial file is
        # dropped either way, so a later pull starts clean.
        return ImageError(f"digest mismatch for blob {digest} of {self._ref.name}: {detail}",
                          permanent=True)


def _write(handle, hasher, data: bytes) -> None:
    hasher.update(data)
    handle.write(data)
