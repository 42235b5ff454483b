"""A loopback HTTP receiver collecting POSTed JSON: the notice inbox of the demo and tests.

It listens on 127.0.0.1 on a free port chosen by the kernel, in a background thread::

    with WebhookReceiver() as hook:
        save_demo_webhook(hook.url, name="test-hook")
        ...
        (message,) = hook.wait_for(1)

``status`` makes it answer with an error instead, to test failing notifications.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class WebhookReceiver:
    """Collects JSON bodies POSTed to ``url`` (any path)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    payload = {"_raw": raw.decode("utf-8", "replace")}
                with receiver._changed:
                    receiver.received.append(payload)
                    receiver.paths.append(self.path)
                    receiver._changed.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST: ``http://127.0.0.1:<port>/hook``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def start(self) -> Self:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first ``count`` messages, waiting up to ``timeout`` seconds for them.

        Raises:
            TimeoutError: fewer than ``count`` arrived in time.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self.received)} of {count} webhook message(s) arrived"
                        f" within {timeout:g}s"
                    )
                self._changed.wait(left)
            return list(self.received[:count])
