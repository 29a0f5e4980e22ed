"""Errors raised by the node agent.

A permanent error fails the replica with its message shown to the customer;
a transient one is retried later, so its message names what was unreachable.
"""


class AgentError(Exception):
    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __str__(self) -> str:
        return self.message


class ImageError(AgentError):
    """Pulling an image or building its disk failed (re-exported by nodes.agent.images)."""
