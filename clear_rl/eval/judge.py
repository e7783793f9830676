"""Optional LLM judge: an OpenAI-compatible chat-completions endpoint grades an answer in [0, 1].

Off by default. The endpoint comes only from the environment, so that no recipe, log or output
file ever holds the key:
- CLEAR_RL_JUDGE_URL: the server's base URL (`http://host:8000/v1`) or its full
  `.../chat/completions` URL;
- CLEAR_RL_JUDGE_MODEL: the model name the server expects;
- CLEAR_RL_JUDGE_API_KEY: optional bearer token; never logged nor put in an error message.
The standard library's urllib does the HTTP, so the judge adds no dependency. Answers are cached
per (question, reference, prediction): the one memo of verdicts, through which the accuracy and
decision rewards (and repeats within a batch) share one request per completion.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clear_rl.errors import ClearRLError

ENV_URL = "CLEAR_RL_JUDGE_URL"
ENV_API_KEY = "CLEAR_RL_JUDGE_API_KEY"
ENV_MODEL = "CLEAR_RL_JUDGE_MODEL"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}

SYSTEM_PROMPT = (
    "You grade answers to questions about images. Compare the prediction with the ground truth "
    "and reply with only a correctness score: 0.0 (wrong), 0.1, ..., 0.9 or 1.0 (right). "
    "<AND> in the ground truth means every element must be present; <OR> means any one suffices. "
    "Paraphrases and equivalent units count as right."
)
USER_TEMPLATE = "Question: {question}\nGround truth: {answer}\nPrediction: {prediction}\nCorrectness score:"

_SCORE = re.compile(r"(?<![\d.])(?:1(?:\.0+)?|0(?:\.\d+)?|\.\d+)(?![\d.])")


class JudgeError(ClearRLError):
    """The judge is not configured, cannot be reached, or answered something unusable."""


class _TransientJudgeError(JudgeError):
    """A failure worth retrying: timeout, refused connection, HTTP 429/5xx, garbled body."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how long to wait for it; `api_key` is kept out of repr."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    retries: int = 2
    retry_wait_s: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> JudgeConfig:
        """Read the CLEAR_RL_JUDGE_* variables; JudgeError names any that is missing."""
        env = os.environ if environ is None else environ
        url, model = env.get(ENV_URL, "").strip(), env.get(ENV_MODEL, "").strip()
        missing = [name for name, value in ((ENV_URL, url), (ENV_MODEL, model)) if not value]
        if missing:
            raise JudgeError(
                f"the LLM judge needs the environment variable(s) {missing} "
                f"({ENV_URL}=http://host:port/v1, {ENV_MODEL}=<model>, optional {ENV_API_KEY})"
            )
        return cls(
            url=chat_completions_url(url), model=model, api_key=env.get(ENV_API_KEY) or None, **overrides
        )


def judge_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names a judge endpoint."""
    return bool((os.environ if environ is None else environ).get(ENV_URL, "").strip())


def chat_completions_url(url: str) -> str:
    """Accept a base URL or the full endpoint; only http(s) is allowed."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise JudgeError(f"{ENV_URL} must be an http(s) URL, got {safe_url(url)!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def safe_url(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


def parse_score(content: str) -> float | None:
    """The first score in [0, 1] in a reply ("0.7", "Score: 1.0"), or True/False as 1/0."""
    text = content.strip()
    lowered = text.lower()
    if lowered.startswith("true"):
        return 1.0
    if lowered.startswith("false"):
        return 0.0
    match = _SCORE.search(text)
    return float(match.group(0)) if match else None


def _redact(text: str, config: JudgeConfig) -> str:
    return text.replace(config.api_key, "<redacted>") if config.api_key else text


def _post(config: JudgeConfig, payload: dict) -> dict:
    """One request; _TransientJudgeError for failures worth retrying, JudgeError for the rest."""
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    request = urllib.request.Request(
        config.url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
    )
    where = safe_url(config.url)
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            body = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        detail = _redact(exc.read().decode("utf-8", errors="replace")[:300], config)
        error = _TransientJudgeError if exc.code in RETRY_STATUS else JudgeError
        raise error(f"judge at {where} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = _redact(str(getattr(exc, "reason", exc)), config)
        raise _TransientJudgeError(f"cannot reach the judge at {where}: {reason}") from None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise _TransientJudgeError(
            f"judge at {where} did not answer JSON: {_redact(body[:300], config)!r}"
        ) from None


def _reply_text(reply: dict, where: str) -> str:
    try:
        return str(reply["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise JudgeError(
            f"judge at {where} answered without choices[0].message.content: {reply!r:.300}"
        ) from None


@functools.lru_cache(maxsize=8192)
def _cached_score(config: JudgeConfig, question: str, answer: str, prediction: str) -> float:
    payload = {
        "model": config.model,
        "temperature": 0.0,
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction),
            },
        ],
    }
    where = safe_url(config.url)
    last_error = ""
    for attempt in range(config.retries + 1):
        if attempt:
            time.sleep(config.retry_wait_s * 2 ** (attempt - 1))
        try:
            content = _reply_text(_post(config, payload), where)
        except _TransientJudgeError as exc:
            last_error = str(exc)
            continue
        score = parse_score(content)
        if score is not None:
            return score
        last_error = (
            f"judge at {where} replied {_redact(content[:200], config)!r}, which holds no score in [0, 1]"
        )
    raise JudgeError(f"{last_error} (after {config.retries + 1} attempts)")


def judge_score(question: str, answer: str, prediction: str, config: JudgeConfig | None = None) -> float:
    """Grade one prediction against the reference; JudgeError says why when it cannot."""
    return _cached_score(config or JudgeConfig.from_env(), str(question), str(answer), str(prediction))


def judge_scores(
    questions: Sequence[str],
    answers: Sequence[str],
    predictions: Sequence[str],
    config: JudgeConfig | None = None,
    max_workers: int = 8,
) -> list[float]:
    """Grade many predictions with concurrent requests, in input order.

    Each distinct (question, answer, prediction) is asked once: repeats within the batch (GRPO
    samples several completions per prompt, often alike) wait for that one request rather than
    race it past the cache, and later batches reuse the cached verdict.
    """
    config = config or JudgeConfig.from_env()
    asked = [(str(q), str(a), str(p)) for q, a, p in zip(questions, answers, predictions)]
    distinct = list(dict.fromkeys(asked))
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        graded = dict(zip(distinct, pool.map(lambda qap: judge_score(*qap, config=config), distinct)))
    return [graded[key] for key in asked]
