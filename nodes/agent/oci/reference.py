"""Image references as Docker writes them: `[registry/]repository[:tag][@sha256:digest]`.

The grammar is distribution's `reference` package: the first path component is a registry only
when it looks like a host (has a dot or a port, or is `localhost`); otherwise the image lives on
Docker Hub, where one-component names belong to `library/`.
"""

import re
from dataclasses import dataclass

from nodes.agent.errors import ImageError
from nodes.agent.oci.digest import Digest, is_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")  # a name, an IPv4 address or [IPv6]


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: Digest | None

    @property
    def endpoint(self) -> str:
        """The host[:port] that serves the registry API."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _bad(ref: str, why: str) -> ImageError:
    return ImageError(f"invalid image reference {ref!r}: {why}", permanent=True)


def parse_reference(ref: str) -> Reference:
    """Parse and validate `ref`, filling in docker.io, library/ and the `latest` tag."""
    text = ref.strip()
    if not text:
        raise _bad(ref, "it is empty")
    if any(c.isspace() for c in text):
        raise _bad(ref, "it contains whitespace")
    name, digest = text, None
    if "@" in text:
        name, digest = text.split("@", 1)
        if not is_digest(digest):
            raise _bad(ref, "the digest must be sha256: followed by 64 lowercase hex digits")
        digest = Digest(digest)
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise _bad(ref, f"tag {tag!r} is not valid (letters, digits, _ . -, at most 128)")
    parts = name.split("/")
    registry = DOCKER_HUB
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
        if not _HOST.fullmatch(registry):
            raise _bad(ref, f"registry {registry!r} is not a valid host[:port]")
        if registry == "index.docker.io":
            registry = DOCKER_HUB
    if not parts or parts == [""]:
        raise _bad(ref, "the repository name is missing")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            if part.lower() != part and _COMPONENT.fullmatch(part.lower()):
                raise _bad(ref, "the repository name must be lowercase")
            raise _bad(ref, f"{part!r} is not a valid repository path component")
    if registry == DOCKER_HUB and len(parts) == 1:
        parts.insert(0, "library")
    repository = "/".join(parts)
    if len(registry) + 1 + len(repository) > 255:
        raise _bad(ref, "the name is longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)
