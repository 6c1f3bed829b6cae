"""Running the app under uvicorn: in the foreground (``tuneloop serve``) or in a background thread
(tests and benchmarks, on a free loopback port).
"""

from __future__ import annotations

import errno
import socket
import threading
import time

from tuneloop.errors import UserError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one. A busy port is the user's to fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", where="--port",
                            hint="pick another port, or stop the program using this one") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}", where="--host/--port",
                        hint="--host must be an address of this machine, e.g. 127.0.0.1 or 0.0.0.0; "
                             "ports below 1024 need privileges") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(app, log_level: str):
    import uvicorn

    # Keep-alive longer than clients' idle pools, so a reused connection is not closed under them.
    return uvicorn.Config(app, log_level=log_level, timeout_keep_alive=30, access_log=False,
                          timeout_graceful_shutdown=10)


def run_foreground(app, sock: socket.socket, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.Server(_config(app, log_level)).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as server: server.url`` -> a live server on 127.0.0.1:<free port>."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(app, "warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
