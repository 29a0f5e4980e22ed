"""The image cache's files under its root (blocking: call through asyncio.to_thread).

blobs/sha256/<hex>   verified blobs (config and layers)
disks/<hex>.ext4     base disks, <hex> of the linux/amd64 manifest digest
disks/<hex>.json     the image's config, its blobs, and the tenants and repositories whose
                     pulls of it a registry authorised; written last, so it marks a finished
                     disk, and its mtime is the image's last use
refs/<sha256(ref)>   the digest a reference last resolved to
tmp/                 work dirs of pulls in progress

Every name under blobs/ and disks/ is made from a `Digest` (digest.py) and nothing else: the
path functions refuse any other value, and what is read back from these files (a ref's digest,
a disk's blobs) becomes a `Digest` again, or the entry counts as absent. A blob found here is
hashed again before a pull uses it (`verified_blob`): the file is only as good as its bytes.
"""

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

from nodes.agent.oci.digest import Digest, is_digest

GARBAGE_AGE_S = 3600
HASH_CHUNK = 1 << 20
CacheEntry = tuple[Digest, int, int, list[Digest]]  # digest, last use (ns), disk bytes, blobs
log = logging.getLogger(__name__)


def _hex(digest: Digest) -> str:
    # A plain string here is a bug in the caller, not bad input: refuse it even when it looks
    # right, so that every caller has to go through Digest's check.
    if not isinstance(digest, Digest) or not is_digest(str(digest)):
        raise TypeError(f"cache paths are made from checked Digest values only, not {type(digest).__name__}")
    return digest.hex


def _digests(values: object) -> list[Digest] | None:
    """A list of digests read back from a cache file; None when it is not one."""
    if not isinstance(values, list) or not all(is_digest(v) for v in values):
        return None
    return [Digest(v) for v in values]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class CacheDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def blob(self, digest: Digest) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def disk(self, digest: Digest) -> Path:
        return self.root / "disks" / f"{_hex(digest)}.ext4"

    def meta(self, digest: Digest) -> Path:
        return self.root / "disks" / f"{_hex(digest)}.json"

    def ref(self, ref: str) -> Path:
        return self.root / "refs" / hashlib.sha256(ref.encode()).hexdigest()

    def work_dir(self, digest: Digest) -> Path:
        return self.root / "tmp" / f"{_hex(digest)[:16]}.{secrets.token_hex(4)}"

    def mkdirs(self) -> None:
        # Root-only, and re-asserted on every pull (mkdir's mode only applies to a new dir, and
        # under the umask): unpacked trees hold setuid binaries and whatever an image carries,
        # and no user of the node may reach them.
        for path in (self.root, *(self.root / sub for sub in ("blobs", "blobs/sha256", "disks", "refs", "tmp"))):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_mode & 0o777 != 0o700:
                os.chmod(path, 0o700)

    @staticmethod
    def write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def touch(self, digest: Digest) -> None:
        now = time.time_ns()
        os.utime(self.meta(digest), ns=(now, now))

    def read_meta(self, digest: Digest) -> dict | None:
        """The metadata of a finished disk, its digests checked; None when either file is
        missing or the metadata is not what this cache writes."""
        try:
            meta = json.loads(self.meta(digest).read_text())
        except (OSError, ValueError):
            return None
        meta = meta if isinstance(meta, dict) else {}  # not what this cache writes: refused below
        blobs = _digests(meta.get("blobs"))
        # Metadata from before issue 23 has neither list: no tenant and no repository vouched for.
        lists = [meta.get(key, []) for key in ("tenants", "repositories")]
        if (blobs is None or meta.get("digest") != digest or not isinstance(meta.get("size_bytes"), int)
                or not isinstance(meta.get("config"), dict)
                or not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in lists)):
            log.warning("image cache: ignoring the malformed metadata of %s", digest)
            return None
        meta["blobs"], meta["tenants"], meta["repositories"] = blobs, *lists
        return meta if self.disk(digest).is_file() else None

    def record_pull(self, digest: Digest, *, tenant: str | None, repository: str | None) -> None:
        """Record that a registry let `tenant` pull this image, from `repository` (the caller
        holds the image's lock). A cached copy stands in for a failing registry for these
        tenants only, and serves other repositories only once they showed they hold its blobs."""
        meta = self.read_meta(digest)
        if meta is None:
            return
        changed = False
        for key, value in (("tenants", tenant), ("repositories", repository)):
            if value is not None and value not in meta[key]:
                meta[key] = sorted({*meta[key], value})
                changed = True
        if changed:
            self.write_atomic(self.meta(digest), json.dumps(meta, indent=1).encode())

    def read_ref(self, ref: str) -> Digest | None:
        try:
            text = self.ref(ref).read_text().strip()
        except OSError:
            return None
        if not is_digest(text):
            log.warning("image cache: ignoring the malformed entry for %s", ref)
            return None
        return Digest(text)

    def verified_blob(self, digest: Digest, size: int) -> bool:
        """True when the cached blob is a regular file whose bytes match `digest` and `size`;
        a file that does not (corrupted, truncated, replaced) is deleted, to be fetched again."""
        path = self.blob(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:  # ELOOP: a symlink where a blob belongs
            fd = None
        hasher = hashlib.sha256()
        ok = False
        if fd is not None:
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if stat.S_ISREG(st.st_mode) and st.st_size == size:
                    while chunk := handle.read(HASH_CHUNK):
                        hasher.update(chunk)
                    ok = Digest.of_hex(hasher.hexdigest()) == digest
        if not ok:
            log.warning("image cache: blob %s no longer matches its digest; fetching it again", digest)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                shutil.rmtree(path)
        return ok

    def scan(self, busy_blobs: set[str], busy_tmp: set[Path]) -> tuple[list[CacheEntry], int]:
        """Finished disks and the bytes the cache uses, counting allocated blocks (base disks
        are sparse). What crashed or failed pulls left behind (work dirs, partial or
        unreferenced blobs) is deleted on the way, unless a pull in progress owns it."""
        self.mkdirs()
        # Another agent process (each CLI command is one) may be pulling into this cache right
        # now, and its work is invisible to our busy sets: only garbage that has not been
        # written to for an hour is taken as left behind.
        cutoff = time.time() - GARBAGE_AGE_S
        for stale in (self.root / "tmp").iterdir():
            if stale not in busy_tmp and _mtime(stale) < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        entries: list[CacheEntry] = []
        referenced: set[str] = set()
        for meta_path in (self.root / "disks").glob("*.json"):
            if not is_digest("sha256:" + meta_path.stem):
                continue  # not a name this cache writes
            digest = Digest.of_hex(meta_path.stem)
            try:
                st_meta = meta_path.stat()
                st_disk = self.disk(digest).stat()
            except OSError:
                continue
            # The digests of an entry come from its file name and its checked metadata, never
            # from a string in the file that would name another place.
            meta = self.read_meta(digest)
            if meta is None:
                continue
            entries.append((digest, st_meta.st_mtime_ns, st_disk.st_blocks * 512, meta["blobs"]))
            referenced.update(meta["blobs"])
        usage = sum(e[2] for e in entries)
        for blob in (self.root / "blobs" / "sha256").iterdir():
            # Only membership tests use this name; what is deleted is the directory entry itself.
            digest = "sha256:" + blob.name.lstrip(".").split(".", 1)[0]
            garbage = blob.name.startswith(".") or digest not in referenced
            if garbage and digest not in busy_blobs and _mtime(blob) < cutoff:
                blob.unlink(missing_ok=True)
                continue
            try:
                usage += blob.stat().st_blocks * 512
            except FileNotFoundError:
                pass  # a partial download another process just renamed or dropped
        return entries, usage

    def delete(self, digest: Digest, blobs: list[Digest]) -> int:
        """Delete a disk, its metadata and the given blobs; returns the bytes freed."""
        freed = 0
        for path in [self.meta(digest), self.disk(digest), *map(self.blob, blobs)]:
            try:
                freed += path.stat().st_blocks * 512
                path.unlink()
            except FileNotFoundError:
                pass
        return freed
