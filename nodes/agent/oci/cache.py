"""The image cache's files under its root (blocking: call through asyncio.to_thread).

blobs/sha256/<hex>   verified blobs (config and layers)
disks/<hex>.ext4     base disks, <hex> of the linux/amd64 manifest digest
disks/<hex>.json     the image's config and blobs; written last, so it marks a finished
                     disk, and its mtime is the image's last use
refs/<sha256(ref)>   the digest a reference last resolved to
tmp/                 work dirs of pulls in progress
"""

import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

GARBAGE_AGE_S = 3600
CacheEntry = tuple[str, int, int, list[str]]  # digest, last use (ns), disk bytes, blobs


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class CacheDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def disk(self, digest: str) -> Path:
        return self.root / "disks" / f"{_hex(digest)}.ext4"

    def meta(self, digest: str) -> Path:
        return self.root / "disks" / f"{_hex(digest)}.json"

    def ref(self, ref: str) -> Path:
        return self.root / "refs" / hashlib.sha256(ref.encode()).hexdigest()

    def work_dir(self, digest: str) -> Path:
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

    def touch(self, digest: str) -> None:
        now = time.time_ns()
        os.utime(self.meta(digest), ns=(now, now))

    def read_meta(self, digest: str) -> dict | None:
        """The metadata of a finished disk; None when either file is missing."""
        try:
            meta = json.loads(self.meta(digest).read_text())
        except (OSError, ValueError):
            return None
        return meta if self.disk(digest).is_file() else None

    def read_ref(self, ref: str) -> str | None:
        try:
            return self.ref(ref).read_text().strip()
        except OSError:
            return None

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
            try:
                meta = json.loads(meta_path.read_text())
                st_meta = meta_path.stat()
                st_disk = self.disk(meta["digest"]).stat()
            except (OSError, ValueError, KeyError):
                continue
            entries.append((meta["digest"], st_meta.st_mtime_ns, st_disk.st_blocks * 512, meta["blobs"]))
            referenced.update(meta["blobs"])
        usage = sum(e[2] for e in entries)
        for blob in (self.root / "blobs" / "sha256").iterdir():
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

    def delete(self, digest: str, blobs: list[str]) -> int:
        """Delete a disk, its metadata and the given blobs; returns the bytes freed."""
        freed = 0
        for path in [self.meta(digest), self.disk(digest), *map(self.blob, blobs)]:
            try:
                freed += path.stat().st_blocks * 512
                path.unlink()
            except FileNotFoundError:
                pass
        return freed
