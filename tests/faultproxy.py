"""A fault-injecting HTTP proxy in front of the moto server, for tests.

It forwards every request unchanged (bench/proxy.py does the forwarding); for requests a rule
matches, it lets the server carry the request out and then answers the client 500 InternalError
instead of the server's answer: the client cannot tell whether its request took effect, exactly
like a response lost to a read timeout.  With ``hold`` set instead, matching requests wait for
it and then go through unchanged (a slow request); with ``cut`` their body breaks off after so
many bytes, with ``stall`` it stops there until an event is set (a server that stops sending).
It serves HTTPS when given a certificate.
"""

import threading

from bench.proxy import CountingProxy, _Handler

_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
          b"<Message>injected by the test proxy: the request was carried out</Message></Error>")


class _FaultHandler(_Handler):
    def _forward_one(self):
        rule = self.server.rule
        if rule is None or not rule(self.command, self.path):
            return super()._forward_one()
        if self.server.hold is not None:  # held until the test lets it go, then forwarded as it is
            with self.server.lock:
                self.server.hits += 1
            assert self.server.hold.wait(120), "a held request was never let go"
            return super()._forward_one()
        body = self._read_body()
        if self.server.cut is not None or self.server.stall is not None:
            # The server's answer, its body broken off after `cut` bytes, or stopped after the
            # first n bytes of `stall` (n, Event) until the event is set, then the rest.
            cut = self.server.cut if self.server.cut is not None else self.server.stall[0]
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
            conn = self._upstream(fresh=True)
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            with self.server.lock:
                self.server.hits += 1
            self._responded = True
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            if self.server.cut is None:
                self.server.stalled.set()
                assert self.server.stall[1].wait(120), "a stalled body was never let go"
                try:
                    self.wfile.write(data[cut:])
                    self.wfile.flush()
                except OSError:  # the client gave up meanwhile
                    self.close_connection = True
                return
            self.close_connection = True
            return
        if self.server.refusal is not None:  # answer an error of our own; the server never sees it
            status, code = self.server.refusal
            error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>' + code.encode() +
                     b"</Code><Message>injected by the test proxy</Message></Error>")
            with self.server.lock:
                self.server.hits += 1
            self._responded = True
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
        headers["Content-Length"] = str(len(body))
        conn = self._upstream(fresh=True)
        conn.request(self.command, self.path, body=body, headers=headers)
        conn.getresponse().read()  # done by the server; the client never hears of it
        with self.server.lock:
            self.server.hits += 1
        self._responded = True
        self.send_response_only(500, "Internal Server Error")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_ERROR)))
        self.end_headers()
        self.wfile.write(_ERROR)


class FaultProxy(CountingProxy):
    """``proxy.rule = lambda method, path: ...`` picks the requests whose answer is replaced."""

    def __init__(self, upstream_url: str, tls: "tuple[str, str] | None" = None):
        """``tls``: (certificate, key) files: it serves HTTPS with them (as S3 does)."""
        super().__init__(upstream_url, tls=tls)
        self._server.RequestHandlerClass = _FaultHandler
        self._server.rule = None
        self._server.refusal = None  # (status, code): refuse matching requests instead of losing answers
        self._server.cut = None  # n: send the server's answer to matching requests, body cut after n bytes
        self._server.hold = None  # a threading.Event: matching requests wait for it, then go through
        self._server.stall = None  # (n, threading.Event): the body stops after n bytes until it is set
        self._server.stalled = threading.Event()  # set once a body stopped there (all before it sent)
        self._server.hits = 0
        self._server.lock = threading.Lock()

    @property
    def rule(self):
        return self._server.rule

    @rule.setter
    def rule(self, fn):
        self._server.rule = fn

    @property
    def refusal(self):
        return self._server.refusal

    @refusal.setter
    def refusal(self, value):
        self._server.refusal = value

    @property
    def cut(self):
        return self._server.cut

    @cut.setter
    def cut(self, n):
        self._server.cut = n

    @property
    def hold(self):
        return self._server.hold

    @hold.setter
    def hold(self, event):
        self._server.hold = event

    @property
    def stall(self):
        return self._server.stall

    @stall.setter
    def stall(self, value):
        self._server.stall = value

    @property
    def stalled(self) -> threading.Event:
        return self._server.stalled

    @property
    def hits(self) -> int:
        return self._server.hits
