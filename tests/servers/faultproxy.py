"""A seeded TCP fault proxy between a client and a PACS, for fault-injection tests.

    proxy = FaultProxy()
    port = proxy.start("127.0.0.1", orthanc.http_port, fault_rate=0.1, seed=1)      # HTTP aware
    port = proxy.start("127.0.0.1", orthanc.dicom_port, 0.1, 1, mode="tcp")         # DIMSE: per association
    ...
    proxy.counters   # Counter: requests/connections seen and each fault injected
    proxy.stop()

HTTP mode works per request: it reads one request, asks the upstream for it on a fresh
connection with `Connection: close`, and with probability `fault_rate` injects one of: a
connection reset before the answer, HTTP 500 or 503, a stall longer than the client's idle
timeout, a truncated answer, or a slow (trickled but complete) answer. TCP mode decides once per
connection (DIMSE association): reset after some bytes, stall, drop at accept, or slow relay.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter

HTTP_FAULTS = ("reset", "http500", "http503", "stall", "truncate", "slow")
TCP_FAULTS = ("reset", "stall", "drop", "slow")


class FaultProxy:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    # -- public API ------------------------------------------------------------------------
    def start(self, target_host: str, target_port: int, fault_rate: float = 0.1, seed: int = 0, *,
              mode: str = "http", faults: tuple[str, ...] | None = None, stall_seconds: float = 5.0,
              slow_delay: float = 0.002) -> int:
        """Listen on a free loopback port and relay to target; returns the port to connect to."""
        self.target = (target_host, target_port)
        self.fault_rate = fault_rate
        self.mode = mode
        self.faults = faults or (HTTP_FAULTS if mode == "http" else TCP_FAULTS)
        self.stall_seconds = stall_seconds
        self.slow_delay = slow_delay
        self._rng = random.Random(seed)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for t in self._threads[:1]:
            t.join(2)

    @property
    def injected(self) -> int:
        """Total number of faults injected so far."""
        with self._lock:
            return sum(v for k, v in self.counters.items() if k in self.faults)

    # -- internals -------------------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] += 1

    def _draw(self) -> str | None:
        with self._lock:
            if self._rng.random() < self.fault_rate:
                return self._rng.choice(self.faults)
            return None

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()  # type: ignore[union-attr]
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            handler = self._http_conn if self.mode == "http" else self._tcp_conn
            t = threading.Thread(target=self._guard, args=(handler, client), daemon=True)
            t.start()

    def _guard(self, handler, client: socket.socket) -> None:
        try:
            handler(client)
        except OSError:
            pass
        finally:
            try:
                client.close()
            except OSError:
                pass

    @staticmethod
    def _rst(sock: socket.socket) -> None:
        """Close with a TCP RST (what a crashing middlebox or PACS looks like)."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # HTTP ---------------------------------------------------------------------------------
    def _read_request(self, client: socket.socket, buf: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buf:
            data = client.recv(65536)
            if not data:
                return None
            buf += data
        head_end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:head_end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buf) < head_end + length:
            data = client.recv(65536)
            if not data:
                return None
            buf += data
        body = bytes(buf[head_end: head_end + length])
        del buf[: head_end + length]
        lines = [ln for ln in head[:-4].split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + body

    def _http_conn(self, client: socket.socket) -> None:
        client.settimeout(60)
        buf = bytearray()
        while not self._stop.is_set():
            request = self._read_request(client, buf)
            if request is None:
                return
            self._count("requests")
            fault = self._draw()
            if fault:
                self._count(fault)
            if fault == "reset":
                self._rst(client)
                return
            if fault in ("http500", "http503"):
                code = 500 if fault == "http500" else 503
                client.sendall(f"HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            with socket.create_connection(self.target, timeout=60) as up:
                up.sendall(request)
                sent = 0
                cut = None
                if fault in ("stall", "truncate"):
                    cut = self._rng_int(200, 4000)
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    if cut is not None and sent + len(data) >= cut:
                        client.sendall(data[: max(cut - sent, 0)])
                        if fault == "stall":
                            self._sleep(self.stall_seconds)
                            self._rst(client)
                        else:
                            client.close()
                        return
                    if fault == "slow":
                        for i in range(0, len(data), 1024):
                            client.sendall(data[i: i + 1024])
                            self._sleep(self.slow_delay)
                    else:
                        client.sendall(data)
                    sent += len(data)
            return  # upstream closed (Connection: close): close the client too

    def _rng_int(self, a: int, b: int) -> int:
        with self._lock:
            return self._rng.randint(a, b)

    # TCP (DIMSE) ----------------------------------------------------------------------------
    def _tcp_conn(self, client: socket.socket) -> None:
        self._count("connections")
        fault = self._draw()
        if fault:
            self._count(fault)
        if fault == "drop":
            self._rst(client)
            return
        up = socket.create_connection(self.target, timeout=60)
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut = self._rng_int(500, 20000) if fault in ("reset", "stall") else None
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket, counted: bool) -> None:
            sent = 0
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if counted and cut is not None and sent + len(data) >= cut:
                        dst.sendall(data[: cut - sent])
                        if fault == "stall":
                            self._sleep(self.stall_seconds)
                        self._rst(client)
                        break
                    if counted and fault == "slow":
                        for i in range(0, len(data), 4096):
                            dst.sendall(data[i: i + 4096])
                            self._sleep(self.slow_delay)
                    else:
                        dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            finally:
                done.set()
                try:  # pass the half-close on, or a peer that waits for our FIN keeps its worker busy
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        back = threading.Thread(target=pump, args=(up, client, True), daemon=True)
        back.start()
        pump(client, up, False)
        back.join(self.stall_seconds + 5)
        up.close()


def start(target_host: str, target_port: int, fault_rate: float, seed: int, **kw) -> FaultProxy:
    """Convenience: a started proxy (its `.port` is where to connect)."""
    p = FaultProxy()
    p.start(target_host, target_port, fault_rate, seed, **kw)
    return p
