"""Fake judges on 127.0.0.1: a scripted OpenAI-compatible chat-completions server, and a silent
one that accepts connections and never answers (a hung judge)."""

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeJudge(BaseHTTPRequestHandler):
    """Replies with the next scripted (status, content), "1.0" when the script is empty; records requests."""

    script: list = []
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content = FakeJudge.script.pop(0) if FakeJudge.script else (200, "1.0")
        if status == 200:
            content = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        data = content.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_judge(script=()):
    """Serve on a free port of 127.0.0.1; yield the base URL (`http://127.0.0.1:PORT/v1`)."""
    from clear_rl.eval import judge

    FakeJudge.script, FakeJudge.seen = list(script), []
    judge._cached_score.cache_clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        judge._cached_score.cache_clear()


@contextlib.contextmanager
def silent_judge():
    """Accept every connection, read nothing, answer nothing; yield the base URL."""
    from clear_rl.eval import judge

    judge._cached_score.cache_clear()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # kept open, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=1)
        for connection in held:
            connection.close()
        server.close()
        judge._cached_score.cache_clear()
