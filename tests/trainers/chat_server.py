"""A real HTTP server in a thread that plays the serving engine's chat completions API for the
trainers' engine-side generation (rDPO, AfD, LD-Align samples; align synthesis)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# (status, text): the answer's content with 200, the error message otherwise.
Answer = Callable[[dict[str, Any]], tuple[int, str]]


class ChatServer:
    """Records every request (``{"path", **body}``) before ``answer`` sees it."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[dict[str, Any]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorded.append({"path": self.path, **body})
                status, text = answer(body)
                payload = ({"choices": [{"message": {"role": "assistant", "content": text}}]}
                           if status == 200 else {"error": {"message": text}})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
