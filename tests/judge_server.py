"""Fake judges on 127.0.0.1: a scripted OpenAI-compatible chat-completions server, and a silent
one that accepts connections and never answers (a hung judge)."""

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _reply(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
    """Send `data` as a JSON-typed response with `status` and any extra headers."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]):
    """Serve `handler` on a free port of 127.0.0.1 with a cold judge cache; yield the base URL."""
    from clear_rl.eval import judge

    judge._cached_score.cache_clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        judge._cached_score.cache_clear()


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
        _reply(self, status, content.encode())

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_judge(script=()):
    """Serve on a free port of 127.0.0.1; yield the base URL (`http://127.0.0.1:PORT/v1`)."""

    FakeJudge.script, FakeJudge.seen = list(script), []
    with _serve(FakeJudge) as url:
        yield url


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


class EchoJudge(BaseHTTPRequestHandler):
    """A judge that echoes the request's Authorization header into every field of its reply, in
    the next scripted way (status, kind): kind `no_content` (a 200 without a message content;
    `null_content`: content null),
    `content` (the header as the content), `not_json` (the header as plain text), `error` (an
    error document, for 4xx / 5xx), `redirect` (a 302 to the same server, header in the URL)."""

    script: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        echo = {"headers": dict(self.headers.items()), "authorization": auth}
        status, kind = EchoJudge.script.pop(0) if EchoJudge.script else (200, "no_content")
        if kind in ("no_content", "null_content"):
            message = {"role": auth, "refusal": auth, **({"content": None} if kind == "null_content" else {})}
            body = {
                "id": auth,
                "object": auth,
                "model": auth,
                "echo": echo,
                "choices": [{"index": 0, "message": message}],
            }
        elif kind == "content":
            body = {
                "id": auth,
                "echo": echo,
                "choices": [{"message": {"role": "assistant", "content": auth}}],
            }
        elif kind == "error":
            body = {
                "error": {"message": f"bad request from {auth}", "type": auth, "code": auth},
                "echo": echo,
            }
        else:
            body = None
        data = (json.dumps(body) if body is not None else f"echo: {auth} {echo}").encode()
        headers = {"Location": f"/v1/chat/completions?key={auth}"} if kind == "redirect" else {}
        _reply(self, status, data, {**headers, "X-Echo": auth})

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def echo_judge(script=()):
    """Serve EchoJudge on a free port of 127.0.0.1; yield the base URL."""

    EchoJudge.script = list(script)
    with _serve(EchoJudge) as url:
        yield url
