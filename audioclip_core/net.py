"""Network helpers shared by the library, the Dagster resources and the tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, chosen by the kernel. Another process may take it before
    the caller binds it; the servers started with one (Dagster, a torchrun rendezvous) fail
    loudly if it does."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
