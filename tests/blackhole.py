"""A loopback TCP proxy in front of a test server that can be switched to fail in two ways.

- ``forward``: relays bytes both ways (the server works).
- ``refuse``: accepts and closes every connection at once (a quick failure, like a dead port).
- ``blackhole``: accepts every connection and never answers, and stops relaying on the
  connections already open: what a dead NAT or a firewall dropping packets looks like.

One thread runs a selector over every socket; `close()` ends it and closes everything.
"""

import selectors
import socket
import threading


class SwitchableProxy:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.mode = "forward"
        self.held: list[socket.socket] = []  # connections accepted or frozen by the black hole
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("forward", "refuse", "blackhole")
        with self._lock:
            self.mode = mode
            if mode == "refuse":  # connections kept alive by the client must fail too
                for s in list(self._peers):
                    self._drop(s)

    def held_count(self) -> int:
        with self._lock:
            return len(self.held)

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)
        for s in [self._listener, *self._peers, *self.held]:
            try:
                s.close()
            except OSError:
                pass

    def _freeze(self, s: socket.socket) -> None:
        """Stop relaying ``s`` and its peer but keep both open: the client waits forever."""
        peer = self._peers.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._peers.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            self.held.append(x)

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.1):  # the timeout only re-checks _stop
                s = key.fileobj
                with self._lock:
                    mode = self.mode
                    if s is self._listener:
                        self._accept(mode)
                    elif s in self._peers:
                        if mode == "blackhole":
                            self._freeze(s)
                        else:
                            self._relay(s)

    def _accept(self, mode: str) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if mode == "refuse":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()  # an RST: "connection reset by peer"
            return
        if mode == "blackhole":
            self.held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for x in (client, upstream):
            x.setblocking(True)
        self._peers[client], self._peers[upstream] = upstream, client
        self._sel.register(client, selectors.EVENT_READ, None)
        self._sel.register(upstream, selectors.EVENT_READ, None)

    def _relay(self, s: socket.socket) -> None:
        peer = self._peers[s]
        try:
            data = s.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(s)  # one side closed: close both

    def _drop(self, s: socket.socket) -> None:
        peer = self._peers.get(s)
        for x in (s, peer):
            if x is None:
                continue
            self._peers.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()
