"""An HTTPS server of one object for tests, whose TLS records and pauses are the test's.

Its TLS is done with `ssl.MemoryBIO`, so the test chooses the size of the records the body goes
out in and where the sending stops: up to the end of the record that holds body offset ``hold``
(``mid_record``: only the first half of that record's bytes), until ``go`` is set; ``reached``
is set once everything before the stop was sent.  It answers GETs (``Range: bytes=N-`` too) on
keep-alive connections, whatever the path; a real S3 server sends 16 KiB records, servers behind
other proxies (nginx, haproxy) or written in Go smaller ones.  `self_signed` makes the
certificate the tests' HTTPS servers use (clients trust it by way of ``AWS_CA_BUNDLE``).
"""

import email.utils
import re
import socket
import ssl
import threading

from bench.tls import self_signed  # noqa: F401  (the tests' certificates)


class PacedTLSServer:
    def __init__(self, cert, key, body: bytes, record: int = 16384, hold: "int | None" = None,
                 mid_record: bool = False):
        self.body, self.record, self.hold, self.mid_record = body, record, hold, mid_record
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.go, self.reached = threading.Event(), threading.Event()
        self.requests = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="paced-tls", daemon=True)

    def __enter__(self) -> "PacedTLSServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # (wakes the accept in progress)
        except OSError:
            pass
        self._listener.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._thread.join(10)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        def more() -> None:  # what the client sent next
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                raise EOFError
            incoming.write(data)

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    more()
            conn.sendall(outgoing.read())
            while True:
                request = b""
                while b"\r\n\r\n" not in request:
                    try:
                        request += tls.read(65536)
                    except ssl.SSLWantReadError:
                        more()
                self._answer(conn, tls, outgoing, request)
        except (EOFError, OSError, ssl.SSLError):
            return

    def _answer(self, conn, tls, outgoing, request: bytes) -> None:
        self.requests += 1
        m = re.search(rb"(?i)\r\nrange: bytes=(\d+)-\r\n", request)
        start = int(m.group(1)) if m else 0
        body = self.body[start:]
        status = "206 Partial Content" if m else "200 OK"
        extra = f"Content-Range: bytes {start}-{len(self.body) - 1}/{len(self.body)}\r\n" if m else ""
        head = (f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\nETag: \"e1\"\r\n"
                f"Last-Modified: {email.utils.formatdate(usegmt=True)}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tls.write(head)
        wire, stop = bytearray(outgoing.read()), None
        for i in range(0, len(body), self.record):
            tls.write(body[i:i + self.record])
            before = len(wire)
            wire += outgoing.read()
            if self.hold is not None and stop is None and start + i + self.record > self.hold:
                stop = (before + len(wire)) // 2 if self.mid_record else len(wire)
        if stop is not None and not self.go.is_set():
            conn.sendall(wire[:stop])
            self.reached.set()
            assert self.go.wait(120), "a held body was never let go"
            wire = wire[stop:]
        conn.sendall(wire)
