"""Content digests: data from a registry, never a path.

A digest arrives from places a customer controls (the reference they typed, the manifest and
index their registry serves, the config and layer descriptors in it) and from the cache's own
files read back from disk. The cache turns digests into file names, so a digest such as
`sha256:/etc/x` or `sha256:../../x` would name a host file. Every digest therefore becomes a
`Digest` where it enters, and the cache's path functions accept nothing else (`cache.py`): no
later code can build a path from an unchecked string, because the only way to get a `Digest`
is through the check.

Only sha256 is accepted, written as the OCI spec registers it: `sha256:` and 64 lowercase hex
digits. Registries that serve sha512 content are rare enough that refusing them clearly beats
widening the one check that keeps names out of paths.
"""

import re

from nodes.agent.errors import ImageError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SHOWN = 80  # how much of a hostile value goes into a message


class Digest(str):
    """A string that is a well-formed sha256 digest: `Digest(text)` checks, or raises
    ImageError (permanent) saying the digest is malformed."""

    __slots__ = ()

    def __new__(cls, value: object, what: str = "digest") -> "Digest":
        if isinstance(value, Digest):
            return value
        if type(value) is not str or not _DIGEST.fullmatch(value):
            raise malformed(value, what)
        return super().__new__(cls, value)

    @property
    def hex(self) -> str:
        return self[7:]

    @classmethod
    def of_hex(cls, hexdigest: str) -> "Digest":
        return cls("sha256:" + hexdigest)


def malformed(value: object, what: str) -> ImageError:
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    return ImageError(f"{what} has a malformed digest {shown}: a digest is sha256: followed by 64 "
                      "lowercase hex digits", permanent=True)


def is_digest(value: object) -> bool:
    return isinstance(value, Digest) or (type(value) is str and _DIGEST.fullmatch(value) is not None)
