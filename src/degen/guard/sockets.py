"""Fixed kernel socket buffers for the guard's connections.

Linux grows a TCP connection's buffers as it sees fit, up to ``net.ipv4.tcp_wmem`` /
``tcp_rmem``'s maxima (4 MiB to send and 6-32 MiB to receive on common distributions).
For a proxy that judges every byte it relays, that growth is read-ahead it did not ask
for: a client that stops reading let the guard take about 4 MiB of its stream from the
upstream (2.6 MiB of it read and judged, the rest in its receive queue) before
back-pressure reached the upstream. A fixed buffer (which turns the kernel's growth off
for that socket) bounds it: the guard fixes the send buffer of each client connection
(:class:`degen.guard.protocol.GuardProtocol`) and the receive buffer of each upstream
connection, before it connects, so the window it offers fits
(:meth:`degen.guard.upstream.StreamPool._open`), at :data:`SOCKET_BUFFER` (the kernel
doubles the value for its bookkeeping): far above what a generation stream needs in
flight, a token every few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

SOCKET_BUFFER = 1 << 17  # bytes; set on the client's send side and the upstream's receive side


def fix_buffer(transport: asyncio.BaseTransport | Any, option: int,
               size: int = SOCKET_BUFFER) -> None:
    """Fix ``option`` (``socket.SO_SNDBUF`` or ``SO_RCVBUF``) of ``transport``'s socket
    at ``size`` bytes; nothing for a transport without a TCP socket (tests' fakes, TLS
    wrappers that hide it, Unix sockets)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # a socket closed under us
        sock.setsockopt(socket.SOL_SOCKET, option, size)
