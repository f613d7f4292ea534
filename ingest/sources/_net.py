"""pynetdicom with TCP_NODELAY and a real per-read idle timeout on our sockets.

Why NODELAY: DCMTK ≥3.6.7 peers (and Orthanc unless started with TCP_NODELAY=1) leave Nagle on;
with delayed ACKs that costs ~40-90 ms per C-FIND and caps C-MOVE/C-GET near 21 instances/s.
Why the socket timeout: pynetdicom 3.0 clears the socket timeout once connected, so a peer that
stalls in the middle of a PDU blocks its reader thread (and `Association.kill`) for ever; a
socket-level idle timeout turns that into an abort we can retry.
pynetdicom has no hook for either, so we subclass the AE.
"""

from __future__ import annotations

import socket
import threading

from pynetdicom import AE


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket (tests may pass a socketpair)
            pass


class NodelayAE(AE):
    """An AE whose associations (as requestor and acceptor) run with Nagle off when `nodelay`."""

    def __init__(self, ae_title: str = "RTLAKE", nodelay: bool = True, idle_timeout: float | None = None) -> None:
        super().__init__(ae_title=ae_title)
        self.nodelay = nodelay
        self.idle_timeout = idle_timeout

    def _create_socket(self, assoc, address, tls_args):  # type: ignore[override]
        sock = super()._create_socket(assoc, address, tls_args)
        if self.nodelay:
            set_nodelay(sock.socket)
        if self.idle_timeout:
            connect = sock.connect

            def connect_then_timeout(primitive):
                connect(primitive)
                if sock.socket is not None and sock._is_connected:
                    sock.socket.settimeout(self.idle_timeout)

            sock.connect = connect_then_timeout
        return sock

    def start_server(self, *args, **kwargs):  # type: ignore[override]
        server = super().start_server(*args, **kwargs)
        if server is not None and self.nodelay:
            accept = server.get_request

            def get_request():
                client, address = accept()
                set_nodelay(client)
                if self.idle_timeout:
                    client.settimeout(self.idle_timeout)
                return client, address

            server.get_request = get_request  # socketserver looks it up on the instance
        return server


def park_reactor(assoc, timeout: float = 2.0) -> None:
    """Make sure the association's reactor thread is really parked before the next request.

    Why: pynetdicom 3.0 re-starts its reactor after each C-FIND and the next `send_c_find`
    only checks a stale `_is_paused` flag; on a fast link the reactor can then swallow the next
    response ("Received unexpected C-FIND service message") and a study goes missing from the
    answer. Waiting until the reactor blocks on its checkpoint closes that window. Best effort:
    if pynetdicom's internals change, it falls back to a short sleep.
    """
    import time

    ev = getattr(assoc, "_reactor_checkpoint", None)
    cond = getattr(ev, "_cond", None)
    if ev is None or cond is None or not hasattr(cond, "_waiters"):
        time.sleep(0.003)
        return
    ev.clear()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and assoc.is_established and not cond._waiters:
        time.sleep(0.0001)


class _HeldCheckpoint(threading.Event):
    """The reactor's checkpoint, kept closed between our own requests (see hold_reactor)."""

    def __init__(self, assoc) -> None:
        super().__init__()
        self.assoc = assoc

    def set(self) -> None:
        a = self.assoc
        if getattr(a, "_kill", False) or getattr(a, "_sent_release", False) or not a.is_established:
            super().set()  # releasing, aborting or dead: let the reactor run and exit


def hold_reactor(assoc) -> bool:
    """Keep the reactor of a requestor-only association parked, so back-to-back requests neither
    race it (see park_reactor) nor wait ~1-2 ms each for it to park again.

    Safe for an association we only use to send requests: the reactor is only needed to serve
    incoming requests and to notice an idle peer abort, which our next request notices anyway
    (and then reconnects). Returns False (and changes nothing) if pynetdicom's internals differ.
    """
    old = getattr(assoc, "_reactor_checkpoint", None)
    if not isinstance(old, threading.Event) or not hasattr(assoc, "_is_paused"):
        return False
    assoc._reactor_checkpoint = _HeldCheckpoint(assoc)
    old.set()  # wake a reactor blocked on the old event; its next wait is on the held one
    return True
