"""OCI images to ext4 base disks, cached by image digest, and copy-on-write overlays per VM.

Pulls use our own registry client (httpx, nodes/agent/oci/) rather than skopeo: we need
byte-level progress for the cold-start breakdown, a sha256 check on every blob as it streams,
and errors a customer can read (skopeo prints Go error chains and progress bars). Layers are
applied in Python (whiteouts, chroot-style symlink resolution) and the disk is made by
`mkfs.ext4 -d`, which needs no root, no loop device and no mount; overlays are `qemu-img`
qcow2 files backed by the cached disk, so a second VM of an image copies nothing.
The files under the store's root are described in nodes/agent/oci/cache.py.
"""

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx

from nodes.agent.errors import ImageError
from nodes.agent.oci import disk as disks
from nodes.agent.oci.cache import CacheDir
from nodes.agent.oci.digest import Digest
from nodes.agent.oci.egress import GuardedBackend, GuardedTransport, RegistryPolicy
from nodes.agent.oci.layers import UnpackBudget, UnpackLimits, apply_layer, measure
from nodes.agent.oci.manifest import PLATFORM, Descriptor, ImageManifest, resolve
from nodes.agent.oci.reference import Reference, parse_reference
from nodes.agent.oci.registry import RegistryClient

__all__ = ["ImageConfig", "ImageDisk", "ImageError", "ImageStore", "OciImageStore", "PullProgress"]

log = logging.getLogger(__name__)
GiB = 1 << 30
MAX_PARALLEL_BLOBS = 3


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    user: str
    exposed_ports: list[int]

    @classmethod
    def from_oci(cls, document: dict) -> "ImageConfig":
        config = document.get("config") or {}
        env = {}
        for item in config.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        ports = set()
        for spec in config.get("ExposedPorts") or {}:
            port, _, proto = spec.partition("/")
            if proto in ("", "tcp") and port.isdigit():
                ports.add(int(port))
        return cls(env=env, entrypoint=list(config.get("Entrypoint") or []),
                   cmd=list(config.get("Cmd") or []), workdir=config.get("WorkingDir") or "/",
                   user=config.get("User") or "", exposed_ports=sorted(ports))


@dataclass(frozen=True)
class ImageDisk:
    ref: str
    digest: str
    path: Path
    size_bytes: int
    config: ImageConfig


@dataclass(frozen=True)
class PullProgress:
    phase: str  # resolve, pull, unpack, disk, cached
    done_bytes: int
    total_bytes: int


ProgressCallback = Callable[[PullProgress], None]


@runtime_checkable
class ImageStore(Protocol):
    async def ensure_disk(self, ref: str, *, credentials: tuple[str, str] | None = None,
                          tenant: str | None = None, progress: ProgressCallback | None = None) -> ImageDisk: ...

    async def create_overlay(self, disk: ImageDisk, dest: Path) -> None: ...

    async def evict(self, *, in_use: set[str]) -> list[str]: ...


class _Reporter:
    """Forwards progress, at most about once per percent of a phase, and never lets a
    broken callback break a pull."""

    def __init__(self, callback: ProgressCallback | None):
        self._callback = callback
        self._last: tuple[str, int] = ("", -1)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self._callback is None:
            return
        last_phase, last_done = self._last
        if phase == last_phase and done != total and done - last_done < max(total // 100, 1):
            return
        self._last = (phase, done)
        try:
            self._callback(PullProgress(phase, done, total))
        except Exception:
            log.exception("image progress callback failed")


class OciImageStore:
    """The ImageStore of a node: see the module docstring and docs/runtime-images.md."""

    def __init__(self, root: Path, *,
                 insecure_registries: frozenset[str] = frozenset({"127.0.0.1:5000", "localhost:5000"}),
                 trusted_registries: frozenset[str] = frozenset(),
                 cache_limit_bytes: int = 20 * GiB, policy: RegistryPolicy | None = None,
                 unpack_limits: UnpackLimits | None = None):
        """`insecure_registries`: reached over plain HTTP. `trusted_registries`: the only ones
        that may sit on loopback, private or other special addresses (oci/egress.py); being
        insecure does not make a registry trusted. `policy` replaces the trusted list (tests:
        a resolver of their own). `unpack_limits`: what one image may expand to on this node
        (oci/limits.py; default 64 GiB)."""
        self.root = Path(root)
        self.insecure_registries = insecure_registries
        self.policy = policy or RegistryPolicy(trusted_registries)
        self.cache_limit_bytes = cache_limit_bytes
        self.unpack_limits = unpack_limits or UnpackLimits()
        self._cache = CacheDir(self.root)
        self._locks: dict[str, asyncio.Lock] = {}
        self._active_tmp: set[Path] = set()
        self._active_blobs: Counter[str] = Counter()  # blobs a pull in progress still needs
        self._ssl: ssl.SSLContext | None = None

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _load(self, digest: Digest, ref: str) -> tuple[ImageDisk, dict] | None:
        """The cached disk for digest and its metadata (cache.py), marked as just used; None
        when not (fully) cached."""
        meta = self._cache.read_meta(digest)
        if meta is None:
            return None
        try:
            config = ImageConfig(**meta["config"])
        except TypeError:
            return None  # metadata of another agent version: build the disk again
        self._cache.touch(digest)
        disk = ImageDisk(ref=ref, digest=digest, path=self._cache.disk(digest), size_bytes=meta["size_bytes"],
                         config=config)
        return disk, meta

    def _cached_for_ref(self, ref: Reference) -> tuple[ImageDisk, dict] | None:
        digest = self._cache.read_ref(str(ref))
        return self._load(digest, str(ref)) if digest else None

    async def _client(self, ref: Reference) -> httpx.AsyncClient:
        if self._ssl is None:
            # Loading the system CA bundle reads files: keep it off the loop, and do it once.
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        transport = GuardedTransport(GuardedBackend(self.policy, ref.endpoint), verify=self._ssl)
        return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=True,
                                 timeout=httpx.Timeout(30.0, connect=10.0),
                                 # identity: a gzip transfer encoding would change the
                                 # raw bytes whose sha256 we check against the digest
                                 headers={"User-Agent": "gantry-agent", "Accept-Encoding": "identity"})

    # -- ensure_disk ------------------------------------------------------------------------------

    async def ensure_disk(self, ref: str, *, credentials: tuple[str, str] | None = None,
                          tenant: str | None = None, progress: ProgressCallback | None = None) -> ImageDisk:
        """The disk of image `ref`, pulled with `credentials` for `tenant` (None: unknown, as
        for the CLI's own runs). The cache serves a pull only as far as the registry would:
        see docs/security.md, "Image digests and the image cache"."""
        reference = parse_reference(ref)
        self.policy.check_reference(reference)
        report = _Reporter(progress)
        await asyncio.to_thread(self._cache.mkdirs)
        async with await self._client(reference) as http:
            client = RegistryClient(http, reference, insecure=reference.endpoint in self.insecure_registries,
                                    credentials=credentials)
            if reference.digest:
                cached = await asyncio.to_thread(self._cached_for_ref, reference)
                if cached:
                    # A digest never changes what it names, so nothing is pulled again; but the
                    # node's copy is served only where the registry would serve this pull: a
                    # HEAD with the pull's own credentials (or none) decides.
                    try:
                        await client.check_manifest(reference.digest, f"image {reference}")
                    except ImageError as exc:
                        return await self._fallback(exc, reference, tenant, report)
                    return await self._serve_cached(cached[0], reference, tenant, report)
            report("resolve", 0, 0)
            try:
                image = await resolve(client, reference)
            except ImageError as exc:
                return await self._fallback(exc, reference, tenant, report)
            async with self._lock(image.digest):
                loaded = await asyncio.to_thread(self._load, image.digest, str(reference))
                if loaded is None:
                    disk = await self._build(client, reference, image, tenant, report)
                else:
                    disk, meta = loaded
                    if reference.name not in meta["repositories"]:
                        # Another repository serving the same manifest bytes (they may be known
                        # without the layers: a registry of one's own serves anything) gets
                        # the disk only once it shows it holds every blob.
                        for blob in image.blobs:
                            await client.check_blob(blob)
                    await self._record_pull(disk, reference, tenant)
                    report("cached", disk.size_bytes, disk.size_bytes)
                await asyncio.to_thread(self._cache.write_atomic, self._cache.ref(str(reference)),
                                        image.digest.encode())
                return disk

    async def _serve_cached(self, disk: ImageDisk, ref: Reference, tenant: str | None,
                            report: _Reporter) -> ImageDisk:
        async with self._lock(disk.digest):
            await self._record_pull(disk, ref, tenant)
        report("cached", disk.size_bytes, disk.size_bytes)
        return disk

    async def _record_pull(self, disk: ImageDisk, ref: Reference, tenant: str | None) -> None:
        await asyncio.to_thread(self._cache.record_pull, Digest(disk.digest), tenant=tenant, repository=ref.name)

    async def _fallback(self, exc: ImageError, ref: Reference, tenant: str | None, report: _Reporter) -> ImageDisk:
        """A cached disk of `ref` while its registry fails (429, 5xx, unreachable), for a tenant
        whose pull of it the registry once allowed; otherwise the registry's error. A refusal
        (401, 403, 404) is never overridden by the cache."""
        if exc.permanent or tenant is None:
            raise exc
        cached = await asyncio.to_thread(self._cached_for_ref, ref)
        if cached is None or tenant not in cached[1]["tenants"]:
            # Another tenant gets the registry's error, not a hint that the node holds the image.
            raise exc
        disk = cached[0]
        log.warning("%s; using the cached %s for %s", exc.message, disk.digest, ref)
        report("cached", disk.size_bytes, disk.size_bytes)
        return disk

    async def _build(self, client: RegistryClient, ref: Reference, image: ImageManifest, tenant: str | None,
                     report: _Reporter) -> ImageDisk:
        # Counted, not locked: evict() must not take these blobs while this pull needs them.
        self._active_blobs.update(image.blobs)
        try:
            await self._pull(client, image, report)
            return await self._unpack(ref, image, tenant, report)
        finally:
            self._active_blobs.subtract(image.blobs)

    async def _pull(self, client: RegistryClient, image: ImageManifest, report: _Reporter) -> None:
        descriptors = [image.config, *image.layers]
        total = sum(desc.size for desc in descriptors)
        done: dict[str, int] = {}

        def on_bytes(blob: str, n: int) -> None:
            done[blob] = n
            report("pull", sum(done.values()), total)

        report("pull", 0, total)
        semaphore = asyncio.Semaphore(MAX_PARALLEL_BLOBS)

        async def fetch(desc: Descriptor) -> None:
            blob = desc.digest
            async with semaphore, self._lock(blob):
                # A blob already here is hashed again (a disk's bytes can change under us) and
                # used only if this repository serves it too: another tenant's private layer is
                # not theirs because its digest is known.
                cached = await asyncio.to_thread(self._cache.verified_blob, blob, desc.size)
                if not cached or not await client.has_blob(blob):
                    await client.fetch_blob(blob, desc.size, self._cache.blob(blob), lambda n: on_bytes(blob, n))
            on_bytes(blob, desc.size)

        tasks = [asyncio.create_task(fetch(desc)) for desc in descriptors]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # gather leaves the other downloads running after one fails; they would go on
            # writing into the cache after ensure_disk has already given up.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _unpack(self, ref: Reference, image: ImageManifest, tenant: str | None,
                      report: _Reporter) -> ImageDisk:
        digest = image.digest
        config_doc = await asyncio.to_thread(self._read_config, image.config.digest, ref)
        platform = (config_doc.get("os"), config_doc.get("architecture"))
        if platform != PLATFORM and all(platform):
            raise ImageError(f"image {ref} is built for {platform[0]}/{platform[1]}, not linux/amd64",
                             permanent=True)
        try:
            config = ImageConfig.from_oci(config_doc)
        except (AttributeError, TypeError, ValueError):
            raise ImageError(f"image {ref} has a malformed config", permanent=True) from None
        work = self._cache.work_dir(digest)
        self._active_tmp.add(work)
        try:
            rootfs = work / "rootfs"
            await asyncio.to_thread(rootfs.mkdir, mode=0o755, parents=True)
            unpacked = sum(layer.size for layer in image.layers)
            applied = 0
            budget = UnpackBudget(self.unpack_limits)  # one per image, shared by its layers
            report("unpack", 0, unpacked)
            for layer in image.layers:
                await asyncio.to_thread(apply_layer, self._cache.blob(layer.digest), rootfs, layer.digest, budget)
                applied += layer.size
                report("unpack", applied, unpacked)
            content, inodes = await asyncio.to_thread(measure, rootfs)
            size, inode_count = disks.disk_geometry(content, inodes)
            report("disk", 0, size)
            disk_image = work / "disk.ext4"
            await disks.make_ext4(rootfs, disk_image, size_bytes=size, inodes=inode_count,
                                  label=ref.repository.rsplit("/", 1)[-1])
            path = self._cache.disk(digest)
            await asyncio.to_thread(os.replace, disk_image, path)
            meta = {"ref": str(ref), "digest": digest, "size_bytes": size,
                    "config": dataclasses.asdict(config), "blobs": image.blobs,
                    "tenants": [tenant] if tenant is not None else [], "repositories": [ref.name]}
            # The metadata file is the commit marker: a disk without one is not in the cache.
            await asyncio.to_thread(self._cache.write_atomic, self._cache.meta(digest),
                                    json.dumps(meta, indent=1).encode())
            report("disk", size, size)
        finally:
            self._active_tmp.discard(work)
            await asyncio.to_thread(shutil.rmtree, work, True)
        await asyncio.to_thread(self._cache.touch, digest)
        return ImageDisk(ref=str(ref), digest=digest, path=path, size_bytes=size, config=config)

    def _read_config(self, digest: Digest, ref: Reference) -> dict:
        # The very bytes parsed are hashed: a config is small, and what it says (env, user,
        # entrypoint) is what the VM runs.
        data = self._cache.blob(digest).read_bytes()
        if Digest.of_hex(hashlib.sha256(data).hexdigest()) != digest:
            self._cache.blob(digest).unlink(missing_ok=True)
            raise ImageError(f"the cached config {digest} of image {ref} changed on disk; pull it again")
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError
            return document
        except ValueError:
            raise ImageError(f"image {ref} has a config that is not a JSON object", permanent=True) from None

    # -- overlays and eviction ----------------------------------------------------------------

    async def create_overlay(self, disk: ImageDisk, dest: Path) -> None:
        if not await asyncio.to_thread(disk.path.is_file):
            raise ImageError(f"the cached disk of {disk.ref} is gone (evicted); pull it again")
        await disks.make_overlay(disk.path, Path(dest))
        await asyncio.to_thread(self._cache.touch, Digest(disk.digest))

    async def evict(self, *, in_use: set[str]) -> list[str]:
        """Delete least recently used disks (and their blobs no other disk needs) until the
        cache fits cache_limit_bytes; never a digest in `in_use` or one being pulled now."""
        busy_blobs = {key for key, n in self._active_blobs.items() if n > 0}
        busy_blobs |= {key for key, lock in self._locks.items() if lock.locked()}
        entries, usage = await asyncio.to_thread(self._cache.scan, busy_blobs, set(self._active_tmp))
        evicted: list[str] = []
        for digest, _, _, blobs in sorted(entries, key=lambda e: e[1]):
            if usage <= self.cache_limit_bytes:
                break
            if digest in in_use or self._lock(digest).locked():
                continue
            async with self._lock(digest):
                others = {b for d, _, _, bs in entries if d != digest and d not in evicted for b in bs}
                doomed = [b for b in blobs if b not in others and b not in busy_blobs]
                usage -= await asyncio.to_thread(self._cache.delete, digest, doomed)
            evicted.append(digest)
        return evicted
