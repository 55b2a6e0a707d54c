"""A counting HTTP proxy between S3 clients and the local moto server.

Both the mount and the raw boto3 references use the proxy as their endpoint, so requests and bytes
are counted the same way for both.  Every request is forwarded unchanged (method, path and query,
headers, body) over a kept-alive connection to the upstream server, and the response is streamed
back with its Content-Length.  Requests are classified by S3 operation:

    GET range   GET of an object with a Range header
    GET         GET of a whole object
    LIST        GET on a bucket with list-type=2 (ListObjectsV2)
    GET bucket  any other GET on a bucket (location, ...)
    HEAD        HEAD of an object
    HEAD bucket HEAD of a bucket (the mount's start-up check)
    PUT part    PUT with partNumber (UploadPart)
    PUT         any other PUT (PutObject, CreateBucket)
    POST        POST (CreateMultipartUpload, CompleteMultipartUpload, DeleteObjects)
    DELETE      DELETE

``bytes`` counts response-body bytes sent to clients; ``errors`` counts responses with a status of
400 or more by kind and status (``GET 404``: a GET of an object that does not exist, such as an
absent owner record), so a wasted request shows; ``not_found`` counts the 404s by method and
path (``GET /bucket/key``), so a key asked for again after a 404 shows too.

``latency`` (seconds, settable at any time) delays every request by that much before it is
forwarded, as the round trip to a nearby S3 region does.  A request that asks ``Expect:
100-continue`` waits that long again for the interim ``100 Continue`` before it sends its body: a
server gives that answer one round trip after the headers left the client (S3 does, after checking
them), so such a request costs two round trips, as it does against S3 (``expect_100`` counts them
by kind).  Each client connection has its own proxy
thread, so the delays of concurrent requests overlap as they would on the network.  The server listens on 127.0.0.1 only, on a
free port, in daemon threads, and is shut down by `stop()` (or the context manager).
"""

import http.client
import socket
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection", "expect",
}


def classify(method: str, target: str, headers) -> str:
    """The S3 operation kind of one path-style request (see the module docstring)."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.lstrip("/")
    on_bucket = "/" not in path or path.endswith("/") and path.count("/") == 1
    if method == "GET":
        if on_bucket:
            return "LIST" if query.get("list-type") == ["2"] else "GET bucket"
        return "GET range" if headers.get("Range") else "GET"
    if method == "HEAD":
        return "HEAD bucket" if on_bucket else "HEAD"
    if method == "PUT":
        return "PUT part" if "partNumber" in query else "PUT"
    return method  # POST, DELETE, anything else


class Counts:
    """Thread-safe request and byte counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()
        self.bytes = 0
        self.errors: Counter = Counter()  # "GET 404" -> count: responses with status >= 400
        self.not_found: Counter = Counter()  # "GET /bucket/key" -> count of 404 answers
        self.not_found_log: list[tuple[float, str]] = []  # (perf_counter at the answer, "GET /bucket/key")
        # (start, end, kind, Range header, body bytes, target, answered) while tracing; answered:
        # when the server's answer (its status and headers) reached the proxy, None without one
        self.trace: list | None = None
        self.expect_100: Counter = Counter()  # kind -> requests that waited for "100 Continue"

    def record(self, start: float, kind: str, rng: str | None, nbytes: int, target: str = "",
               answered: float | None = None) -> None:
        """One finished request, kept while tracing: (start, end, kind, Range, body bytes, target,
        answered)."""
        with self._lock:
            if self.trace is not None:
                self.trace.append((start, time.perf_counter(), kind, rng, nbytes, target, answered))

    def add_status(self, kind: str, status: int, method: str = "", target: str = "") -> None:
        if status >= 400:
            with self._lock:
                self.errors[f"{kind} {status}"] += 1
                if status == 404:
                    key = f"{method} {urlsplit(target).path}"
                    self.not_found[key] += 1
                    self.not_found_log.append((time.perf_counter(), key))

    def not_found_between(self, t0: float, t1: float) -> dict[str, list[float]]:
        """The 404 answers between two perf_counter times: key -> their times, in order."""
        out: dict[str, list[float]] = {}
        with self._lock:
            for t, key in self.not_found_log:
                if t0 <= t <= t1:
                    out.setdefault(key, []).append(t)
        return out

    def start_trace(self) -> None:
        with self._lock:
            self.trace = []

    def stop_trace(self) -> list:
        with self._lock:
            out, self.trace = self.trace or [], None
            return out

    def add(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes += nbytes

    def add_expect_100(self, kind: str) -> None:
        with self._lock:
            self.expect_100[kind] += 1

    def add_bytes(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": dict(self.requests), "bytes": self.bytes, "errors": dict(self.errors),
                    "not_found": dict(self.not_found), "expect_100": dict(self.expect_100)}

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        req = {k: after["requests"].get(k, 0) - before["requests"].get(k, 0) for k in after["requests"]}
        err = {k: v - before.get("errors", {}).get(k, 0) for k, v in after.get("errors", {}).items()}
        nf = {k: v - before.get("not_found", {}).get(k, 0) for k, v in after.get("not_found", {}).items()}
        ex = {k: v - before.get("expect_100", {}).get(k, 0) for k, v in after.get("expect_100", {}).items()}
        return {"requests": {k: v for k, v in sorted(req.items()) if v},
                "total": sum(req.values()), "bytes": after["bytes"] - before["bytes"],
                "errors": {k: v for k, v in sorted(err.items()) if v},
                "not_found": {k: v for k, v in sorted(nf.items()) if v},
                "expect_100": {k: v for k, v in sorted(ex.items()) if v}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    server: "_Server"

    def setup(self):
        super().setup()
        # Without this, a small body written after the headers waits for the client's delayed ACK
        # (Nagle): +40 ms on every LIST or small GET.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - quiet: no line per request
        pass

    def handle_expect_100(self):
        """``Expect: 100-continue``: the client sends its body only after this interim answer,
        which a server gives one round trip after the headers left the client."""
        self.server.counts.add_expect_100(classify(self.command, self.path, self.headers))
        if self.server.latency > 0:
            time.sleep(self.server.latency)
        return super().handle_expect_100()

    def _upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self, "_conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            # (http.client sets TCP_NODELAY on its own connections)
            conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=120)
            self._conn = conn
        return conn

    def finish(self):
        try:
            super().finish()
        finally:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(out)
                out.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def parse_request(self):
        self._start = time.perf_counter()  # before an Expect: 100-continue wait (handle_expect_100)
        return super().parse_request()

    def _forward(self):
        self._recorded, self._sent, self._responded = False, 0, False  # (also for _FaultHandler's own paths)
        self._answered = None  # when the server's answer came (its headers)
        try:
            self._forward_one()
        finally:
            self._record()

    def _record(self) -> None:
        """Trace the request once, as finished (just before its last bytes leave, so a client that
        stops the trace once it has its answer finds the request in it)."""
        if not self._recorded:
            self._recorded = True
            self.server.counts.record(self._start, classify(self.command, self.path, self.headers),
                                      self.headers.get("Range"), getattr(self, "_sent", 0), self.path,
                                      getattr(self, "_answered", None))

    def _forward_one(self):
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        kind = classify(self.command, self.path, self.headers)
        if self.server.latency > 0:
            time.sleep(self.server.latency)  # the round trip of a nearby region, before the server sees it
        reused = getattr(self, "_conn", None) is not None
        try:
            conn = self._upstream()
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
        except (ConnectionError, http.client.HTTPException, OSError):
            if not reused:
                raise
            conn = self._upstream(fresh=True)  # the kept-alive upstream connection went away
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
        self._answered = time.perf_counter()
        self._responded = True
        self.server.counts.add_status(kind, resp.status, self.command, self.path)
        self.send_response_only(resp.status, resp.reason)
        out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        # Each request is counted before its answer leaves: a client that reads the counts right
        # after its answer must find its request there.
        if no_body:
            for k, v in out_headers:
                self.send_header(k, v)
            self.server.counts.add(kind, 0)
            resp.read()
            self._record()
            self.end_headers()
            return
        if length is None:  # chunked or close-delimited upstream: buffer it to give a length
            data = resp.read()
            out_headers.append(("Content-Length", str(len(data))))
            for k, v in out_headers:
                self.send_header(k, v)
            self.server.counts.add(kind, len(data))
            self._sent = len(data)
            self._record()
            self.end_headers()
            self.wfile.write(data)
            return
        for k, v in out_headers:
            self.send_header(k, v)
        self.server.counts.add(kind, 0)
        left = int(length)
        if not left:
            self._record()
        self.end_headers()
        while left > 0:
            chunk = resp.read(min(CHUNK, left))
            if not chunk:
                break
            self.server.counts.add_bytes(len(chunk))
            self._sent += len(chunk)
            left -= len(chunk)
            if not left:
                self._record()
            self.wfile.write(chunk)
        if left:  # the upstream response was cut short: the client cannot be given a valid reply
            self.close_connection = True
            self._upstream(fresh=True)

    def _handle(self):
        try:
            self._forward()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away
        except Exception as e:  # upstream unreachable: answer 502 rather than hang the client
            self.close_connection = True
            if getattr(self, "_responded", False):
                return  # a reply was started: closing the connection tells the client it is cut
            msg = f"bench proxy: upstream error: {e}".encode()
            try:
                self.send_response(502)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
            except OSError:
                pass

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    latency = 0.0


class CountingProxy:
    """``with CountingProxy("http://127.0.0.1:5000") as proxy: ... proxy.url, proxy.counts``"""

    def __init__(self, upstream_url: str, tls: "tuple | None" = None):
        """``tls``: (certificate, key) files: it serves HTTPS with them (as S3 does)."""
        up = urlsplit(upstream_url)
        if up.scheme != "http" or up.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the bench proxy only forwards to a loopback http server, not {upstream_url}")
        self.counts = Counts()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream_host = up.hostname
        self._server.upstream_port = up.port or 80
        self._server.counts = self.counts
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            # (each connection's handshake happens in its own handler thread, on its first read)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
            self.url = self.url.replace("http://", "https://")
        self._thread: threading.Thread | None = None

    def start(self) -> "CountingProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="bench-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    @property
    def latency(self) -> float:
        """Seconds every request waits before it is forwarded (0: none)."""
        return self._server.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._server.latency = max(0.0, float(seconds))

    def snapshot(self) -> dict:
        return self.counts.snapshot()

    def __enter__(self) -> "CountingProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
