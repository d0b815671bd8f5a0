"""A loopback implementation of the AWS Lambda Runtime API (2018-06-01), enough to run
`python -m awslambdaric lambda_function.lambda_handler` outside AWS and outside Docker."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


class RuntimeAPI:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.results: dict[str, tuple[str, dict]] = {}
        self.done = threading.Condition()
        self.init_error: dict | None = None
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"{}", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404)
                request_id, event = api.events.get()
                self._reply(200, json.dumps(event).encode(), {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": "9999999999999",
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:busi",
                    "Lambda-Runtime-Trace-Id": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419",
                })

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts[:2] == ["init", "error"]:
                    api.init_error = json.loads(body or b"{}")
                    with api.done:
                        api.done.notify_all()
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with api.done:
                        api.results[parts[1]] = (parts[2], json.loads(body or b"null"))
                        api.done.notify_all()
                else:
                    return self._reply(404)
                self._reply(202, b'{"status":"OK"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def invoke(self, event, timeout: float = 60.0) -> tuple[str, dict]:
        """Queue an event for the runtime; wait for ("response" | "error", payload)."""
        request_id = str(uuid.uuid4())
        self.events.put((request_id, event))
        with self.done:
            ok = self.done.wait_for(lambda: request_id in self.results or self.init_error, timeout)
        if self.init_error:
            raise RuntimeError(f"runtime init error: {self.init_error}")
        if not ok:
            raise TimeoutError("the runtime did not answer in time")
        return self.results[request_id]
