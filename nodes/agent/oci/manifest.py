"""What a registry's manifest or index may say, checked before anything acts on it.

A manifest and an index are JSON a customer's registry serves, so every field the pull uses is
checked here, once, and comes out typed: digests as `Digest` (digest.py: anything but `sha256:`
and 64 lowercase hex digits is refused, saying the digest is malformed), sizes as non-negative
integers. The rest of the pull works on `ImageManifest` and never sees the raw document, so no
later code can take a digest that was not checked. An index is checked whole, every entry's
digest included, although only its linux/amd64 entry is followed: a document that names a path
as a digest anywhere is not one to trust for the rest.
"""

from dataclasses import dataclass

from nodes.agent.errors import ImageError
from nodes.agent.oci.digest import Digest
from nodes.agent.oci.reference import Reference
from nodes.agent.oci.registry import INDEX_TYPES, MANIFEST_TYPES, RegistryClient

PLATFORM = ("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    digest: Digest
    size: int


@dataclass(frozen=True)
class ImageManifest:
    """The linux/amd64 image a reference names: its manifest's digest, config and layers."""

    digest: Digest
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def blobs(self) -> list[Digest]:
        return [self.config.digest, *(layer.digest for layer in self.layers)]


def _malformed(ref: Reference, what: str) -> ImageError:
    return ImageError(f"image {ref} has a malformed {what}", permanent=True)


def is_index(document: dict) -> bool:
    return document.get("mediaType", "") in INDEX_TYPES or ("manifests" in document and "layers" not in document)


def platform_entry(document: dict, ref: Reference) -> Digest:
    """The digest of the index's linux/amd64 manifest; every entry is checked first."""
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise _malformed(ref, "index")
    chosen: Digest | None = None
    offered = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "digest" not in entry:
            raise _malformed(ref, "index")
        digest = Digest(entry["digest"], f"image {ref}'s index entry {i}")
        platform = entry.get("platform") or {}
        pair = (platform.get("os"), platform.get("architecture")) if isinstance(platform, dict) else (None, None)
        offered.append("/".join(str(p) for p in pair))
        if pair == PLATFORM and chosen is None:
            chosen = digest
    if chosen is None:
        shown = ", ".join(sorted(set(offered))) or "nothing"
        raise ImageError(f"image {ref} has no linux/amd64 variant (it offers {shown})", permanent=True)
    return chosen


def _descriptor(value: object, ref: Reference, what: str) -> Descriptor:
    if not isinstance(value, dict) or "digest" not in value:
        raise _malformed(ref, "manifest")
    digest = Digest(value["digest"], f"image {ref}'s {what}")
    size = value.get("size")
    if type(size) is not int or size < 0:
        raise _malformed(ref, "manifest")
    return Descriptor(digest, size)


def image_manifest(document: dict, digest: Digest, ref: Reference) -> ImageManifest:
    media_type = document.get("mediaType", "")
    if media_type not in MANIFEST_TYPES and "layers" not in document:
        raise ImageError(f"image {ref} has an unsupported manifest type {media_type!r}", permanent=True)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise _malformed(ref, "manifest")
    config = _descriptor(document.get("config"), ref, "config descriptor")
    return ImageManifest(digest=Digest(digest), config=config,
                         layers=tuple(_descriptor(layer, ref, f"layer {i}") for i, layer in enumerate(layers)))


async def resolve(client: RegistryClient, ref: Reference) -> ImageManifest:
    """The linux/amd64 image manifest `ref` names, checked."""
    document, digest = await client.manifest(ref.reference, f"image {ref}")
    if is_index(document):
        entry = platform_entry(document, ref)
        document, digest = await client.manifest(entry, f"linux/amd64 image of {ref}")
        if is_index(document):
            raise ImageError(f"image {ref} has an index where its linux/amd64 manifest belongs", permanent=True)
    return image_manifest(document, digest, ref)
