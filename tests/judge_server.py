"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for judge tests."""

import contextlib
import json
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
