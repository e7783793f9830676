"""Optional LLM judge: an OpenAI-compatible chat-completions endpoint grades an answer in [0, 1].

Off by default. The endpoint comes only from the environment, so that no recipe, log or output
file ever holds the key:
- CLEAR_RL_JUDGE_URL: the server's base URL (`http://host:8000/v1`) or its full
  `.../chat/completions` URL;
- CLEAR_RL_JUDGE_MODEL: the model name the server expects;
- CLEAR_RL_JUDGE_API_KEY: optional bearer token; never logged nor put in an error message:
  everything shown of a reply, a request or an exception goes through `redact`;
- CLEAR_RL_JUDGE_TIMEOUT: seconds to wait for one reply (default 20): a server that accepts the
  connection and never answers costs this long per attempt;
- CLEAR_RL_JUDGE_RETRIES: further attempts after a timeout, refusal, HTTP 429/5xx or unusable
  reply (default 1), so at most (1 + retries) x timeout plus 1 s of waits per answer (41 s);
- CLEAR_RL_JUDGE_ON_FAILURE: `fail` (default) raises JudgeError; `rules` keeps the rule-based
  score for answers the judge could not grade, with a warning in the log that counts them, so a
  judge that goes down does not abort a long training run or evaluation.
A reply is a score only in the prompt's own format (`parse_score`: the number alone, or after
"Score:" / "Correctness:"); anything else, a refusal or prose with a number in it, is a failure
(retried, then handled as CLEAR_RL_JUDGE_ON_FAILURE says), never a score read out of the text.
The standard library's urllib does the HTTP, so the judge adds no dependency. Answers are cached
per (prompt style, question, reference, prediction): the one memo of verdicts, through which the
accuracy and decision rewards (and repeats within a batch) share one request per completion.
Two prompt styles: `default` (a system turn with the grading rules) and `mmvet`, MM-Vet's own
few-shot grading prompt, with which the benchmark's published scores are made.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import os
import re
import threading
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
ENV_TIMEOUT = "CLEAR_RL_JUDGE_TIMEOUT"
ENV_RETRIES = "CLEAR_RL_JUDGE_RETRIES"
ENV_ON_FAILURE = "CLEAR_RL_JUDGE_ON_FAILURE"
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_RETRIES = 1
ON_FAILURE = ("fail", "rules")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You grade answers to questions about images. Compare the prediction with the ground truth "
    "and reply with only a correctness score: 0.0 (wrong), 0.1, ..., 0.9 or 1.0 (right). "
    "<AND> in the ground truth means every element must be present; <OR> means any one suffices. "
    "Paraphrases and equivalent units count as right."
)
USER_TEMPLATE = "Question: {question}\nGround truth: {answer}\nPrediction: {prediction}\nCorrectness score:"
# MM-Vet's grading prompt (its evaluator and VLMEvalKit's MMVet use it), sent as one user turn
# followed by "question | ground truth | prediction | " for the judge to complete.
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for \
the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground \
truth are present in the prediction, and <OR> means it is totally right when any one element in the \
ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, \
0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries \
Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green \
landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has \
trust issues because the names of these countries do not accurately represent their landscapes. | The \
meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very \
icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries \
Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green \
landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has \
trust issues because the names of these countries do not accurately represent their landscapes. | The \
meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, \
despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text \
'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to \
distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names \
of the countries and their actual physical characteristics. | 1.0
"""
STYLES = ("default", "mmvet")

# The whole reply: a score in [0, 1] as the prompts ask for it, alone or after the label the
# prompts use ("Correctness score:", MM-Vet's "Correctness" column), with a closing '.' or '|'.
_SCORE_REPLY = re.compile(
    r"(?:(?:(?:correctness\s+)?score|correctness)\s*[:=]?\s*)?(1(?:\.0*)?|0(?:\.\d*)?|\.\d+)\s*[.|]?",
    re.IGNORECASE,
)
REDACTED = "<redacted>"
# An Authorization header's value, as a header dump or a JSON/Python mapping shows it.
_AUTHORIZATION = re.compile(r"""(authorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+""", re.IGNORECASE)
_BEARER = re.compile(r"""(bearer\s+)[^\s"',}]+""", re.IGNORECASE)


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
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    retry_wait_s: float = 1.0
    on_failure: str = "fail"  # fail | rules

    def __post_init__(self) -> None:
        if self.on_failure not in ON_FAILURE:
            raise JudgeError(
                f"{ENV_ON_FAILURE} must be one of {', '.join(ON_FAILURE)}, got {self.on_failure!r}"
            )
        if not self.timeout_s > 0 or self.retries < 0:
            raise JudgeError(
                f"the judge needs timeout_s > 0 and retries >= 0, got {self.timeout_s}, {self.retries}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> JudgeConfig:
        """Read the CLEAR_RL_JUDGE_* variables; JudgeError names any that is missing or malformed."""
        env = os.environ if environ is None else environ
        url, model = env.get(ENV_URL, "").strip(), env.get(ENV_MODEL, "").strip()
        missing = [name for name, value in ((ENV_URL, url), (ENV_MODEL, model)) if not value]
        if missing:
            raise JudgeError(
                f"the LLM judge needs the environment variable(s) {missing} "
                f"({ENV_URL}=http://host:port/v1, {ENV_MODEL}=<model>, optional {ENV_API_KEY})"
            )
        api_key = env.get(ENV_API_KEY, "").strip() or None
        if api_key and any(not (char.isprintable() and not char.isspace()) for char in api_key):
            # http.client would refuse it with an error that prints the header, key and all.
            raise JudgeError(f"{ENV_API_KEY} holds a space or a control character; set the key alone")
        settings = {
            "timeout_s": _env_number(env, ENV_TIMEOUT, float, DEFAULT_TIMEOUT_S, "a number of seconds > 0"),
            "retries": _env_number(env, ENV_RETRIES, int, DEFAULT_RETRIES, "a whole number >= 0"),
            "on_failure": env.get(ENV_ON_FAILURE, "").strip().lower() or "fail",
        }
        return cls(
            url=chat_completions_url(url),
            model=model,
            api_key=api_key,
            **{**settings, **overrides},
        )


def _env_number(env: Mapping[str, str], name: str, kind: type, default, what: str):
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise JudgeError(f"{name} must be {what}, got {text!r}") from None
    if (kind is float and not value > 0) or (kind is int and value < 0):
        raise JudgeError(f"{name} must be {what}, got {text!r}")
    return value


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
    """The score of a well-formed reply ("0.7", "Score: 0.4", "Correctness: 1.0"), else None:
    a refusal, an id, a date or a number inside prose is no score."""
    match = _SCORE_REPLY.fullmatch(str(content).strip())
    return float(match.group(1)) if match else None


def redact(text: str, secret: str | None) -> str:
    """`text` with the API key (as sent, and as JSON or a URL escapes it) and every bearer token
    or Authorization header value replaced by <redacted>: what every message showing a judge
    reply, request or exception is passed through."""
    text = str(text)
    if secret:
        for form in {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}:
            text = text.replace(form, REDACTED)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def _shown(text: str, config: JudgeConfig, limit: int = 300) -> str:
    """A reply or exception for a message: redacted first, then cut (a cut key is not found)."""
    return redact(text, config.api_key)[:limit]


def _failure(config: JudgeConfig, message: str, transient: bool = False) -> JudgeError:
    return (_TransientJudgeError if transient else JudgeError)(redact(message, config.api_key))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would send the Authorization header to another address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


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
        with _OPENER.open(request, timeout=config.timeout_s) as response:
            body = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        detail = _shown(exc.read().decode("utf-8", errors="replace"), config)
        moved = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        message = f"judge at {where} answered HTTP {exc.code}{moved}: {detail}"
        raise _failure(config, message, transient=exc.code in RETRY_STATUS) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timed out, torn reply
        reason = _shown(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", config)
        raise _failure(config, f"cannot reach the judge at {where}: {reason}", transient=True) from None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        message = f"judge at {where} did not answer JSON: {_shown(body, config)!r}"
        raise _failure(config, message, transient=True) from None


def _reply_text(reply: dict, config: JudgeConfig) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        shown = _shown(json.dumps(reply, ensure_ascii=False, default=str), config)
        message = f"judge at {safe_url(config.url)} answered without choices[0].message.content: {shown}"
        raise _failure(config, message, transient=True)
    return content


def judge_messages(style: str, question: str, answer: str, prediction: str) -> list[dict]:
    """The chat messages that ask for one grade in the given prompt style."""
    if style == "mmvet":
        answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
        return [{"role": "user", "content": MMVET_PROMPT + " | ".join([question, answer, prediction, ""])}]
    if style != "default":
        raise JudgeError(f"judge prompt style must be one of {', '.join(STYLES)}, got {style!r}")
    user = USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@functools.lru_cache(maxsize=8192)
def _cached_score(config: JudgeConfig, style: str, question: str, answer: str, prediction: str) -> float:
    payload = {
        "model": config.model,
        "temperature": 0.0,
        "max_tokens": 16,
        "messages": judge_messages(style, question, answer, prediction),
    }
    where = safe_url(config.url)
    last_error = ""
    for attempt in range(config.retries + 1):
        if attempt:
            time.sleep(config.retry_wait_s * 2 ** (attempt - 1))
        try:
            content = _reply_text(_post(config, payload), config)
        except _TransientJudgeError as exc:
            last_error = str(exc)
            continue
        score = parse_score(content)
        if score is not None:
            return score
        last_error = (
            f"judge at {where} replied {_shown(content, config, 200)!r}, which is no score in [0, 1] "
            "(the reply must be the score alone, e.g. 0.7)"
        )
    raise _failure(config, f"{last_error} (after {config.retries + 1} attempts)")


def judge_score(
    question: str, answer: str, prediction: str, config: JudgeConfig | None = None, style: str = "default"
) -> float:
    """Grade one prediction against the reference; JudgeError says why when it cannot."""
    config = config or JudgeConfig.from_env()
    return _cached_score(config, style, str(question), str(answer), str(prediction))


class _FailureCount:
    """Answers the judge could not grade and the rules scored instead, over the process's life."""

    def __init__(self) -> None:
        self._lock, self.total = threading.Lock(), 0

    def add(self, n: int) -> int:
        with self._lock:
            self.total += n
            return self.total


JUDGE_FAILURES = _FailureCount()


def judge_scores(
    questions: Sequence[str],
    answers: Sequence[str],
    predictions: Sequence[str],
    config: JudgeConfig | None = None,
    max_workers: int = 8,
    style: str = "default",
) -> list[float | None]:
    """Grade many predictions with concurrent requests, in input order.

    Each distinct (question, answer, prediction) is asked once: repeats within the batch (GRPO
    samples several completions per prompt, often alike) wait for that one request rather than
    race it past the cache, and later batches reuse the cached verdict. With
    `on_failure="rules"`, an answer the judge cannot grade is None (the caller keeps its rule
    score), the ones not yet asked after a failure are not sent (a judge that is down costs one
    timeout per batch, not one per answer), and a warning counts them; otherwise JudgeError.
    """
    config = config or JudgeConfig.from_env()
    asked = [(str(q), str(a), str(p)) for q, a, p in zip(questions, answers, predictions)]
    distinct = list(dict.fromkeys(asked))
    down = threading.Event()
    reasons: list[str] = []

    def grade(qap: tuple[str, str, str]) -> float | None:
        if down.is_set():
            return None
        try:
            return judge_score(*qap, config=config, style=style)
        except JudgeError as exc:
            if config.on_failure != "rules":
                raise
            down.set()
            reasons.append(str(exc))
            return None

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        graded = dict(zip(distinct, pool.map(grade, distinct)))
    failed = sum(graded[key] is None for key in asked)
    if failed:
        total = JUDGE_FAILURES.add(failed)
        logger.warning(
            "LLM judge failed (%s); %d of %d answers in this batch scored by the rules instead "
            "(%d so far in this run; %s=rules)",
            reasons[0] if reasons else "not asked after an earlier failure",
            failed,
            len(asked),
            total,
            ENV_ON_FAILURE,
        )
    return [graded[key] for key in asked]
