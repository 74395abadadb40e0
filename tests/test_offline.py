"""Tests stay offline: conftest's guard refuses name lookups and connections beyond this machine."""

import pytest


def test_the_network_guard_refuses_outside_hosts():
    """The guard above is on: a lookup of the hub fails at once; loopback still works."""
    import socket

    with pytest.raises(OSError, match="offline"):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    assert socket.getaddrinfo("127.0.0.1", 80)
