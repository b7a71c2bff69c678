"""A fake OpenAI-compatible chat endpoint over real HTTP on 127.0.0.1, for the judge and curation tests.

    with FakeServer() as server:                  # server.url = "http://127.0.0.1:<port>/v1"
        server.script = [(500, {...}), answer("Total Score: 7")]   # replies in order, the last repeated
        server.respond = lambda request: answer("...")             # or computed from each request body

Only POST /v1/chat/completions exists (anything else is a 404). Every request body and its headers
are recorded in `requests` and `headers`.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from liveditor.data_pipeline.generate.standin_vlm import chat_reply, prompt_text  # noqa: F401 (prompt_text: for tests)


def answer(text):
    """A 200 reply whose `choices[0].message.content` is `text`."""
    return 200, chat_reply(text)


class FakeServer:
    """Answers POST /v1/chat/completions from `respond(request)` when set, else from `script`: a list of
    (status, body) used in order, the last repeated. Records every request body."""

    def __init__(self):
        self.script = [answer("Total Score: 7")]
        self.respond = None
        self.requests = []
        self.headers = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                with outer.lock:
                    outer.requests.append(request)
                    outer.headers.append(dict(self.headers))
                    n = len(outer.requests)
                if outer.respond is not None:
                    status, reply = outer.respond(request)
                else:
                    status, reply = outer.script[min(n - 1, len(outer.script) - 1)]
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                if self.path != "/v1/chat/completions":
                    status, data = 404, b'{"error": "no such route"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
