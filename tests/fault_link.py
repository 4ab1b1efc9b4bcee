"""Network faults for end-to-end tests: a TCP link to a server that the test takes down and brings up."""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


class FaultyLink:
    """A TCP forwarder in front of a server (``http://host:port``). While down, it accepts each connection
    and closes it at once, as an unreachable server looks to a client; ``up()`` forwards from then on.

    It listens on a port the system picks, so no other process can take it between choosing and binding.
    """

    def __init__(self, target_uri: str):
        target = urlsplit(target_uri)
        self.target = (target.hostname, target.port)
        self.refused = 0  # connections closed while down
        self._down = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self._down = False

    def __enter__(self) -> "FaultyLink":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):  # wakes the other direction's recv, which then ends too
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()
