"""The optional LLM judge, against a chat-completions server on 127.0.0.1 inside the test process."""

import pytest
from judge_server import FakeJudge, fake_judge

from clear_rl.eval import judge
from clear_rl.eval.judge import JudgeConfig, JudgeError, judge_score, judge_scores, parse_score

SECRET = "sk-test-secret-123"


@pytest.fixture
def server():
    with fake_judge() as url:
        yield url


def config_for(url, **kw):
    env = {judge.ENV_URL: url, judge.ENV_MODEL: "grader", judge.ENV_API_KEY: SECRET}
    return JudgeConfig.from_env(env, retry_wait_s=0.0, timeout_s=5.0, **kw)


def test_scores_and_request_shape(server):
    FakeJudge.script = [(200, "0.7"), (200, "True")]
    config = config_for(server)
    assert judge_score("What colour?", "red", "crimson", config) == pytest.approx(0.7)
    assert judge_score("How many?", "3", "three", config) == 1.0
    first = FakeJudge.seen[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == f"Bearer {SECRET}"
    assert first["body"]["model"] == "grader" and first["body"]["temperature"] == 0.0
    assert "crimson" in first["body"]["messages"][-1]["content"]


def test_answers_are_cached_and_batched_in_order(server):
    FakeJudge.script = [(200, "0.0"), (200, "1.0")]
    config = config_for(server)
    scores = judge_scores(["q", "q"], ["a", "b"], ["x", "y"], config, max_workers=1)
    assert scores == [0.0, 1.0]
    assert judge_score("q", "a", "x", config) == 0.0  # cached: no third request
    assert len(FakeJudge.seen) == 2


def test_retries_transient_failures_then_succeeds(server):
    FakeJudge.script = [(503, "busy"), (200, "no idea"), (200, "Score: 0.4")]
    assert judge_score("q", "a", "p", config_for(server, retries=2)) == pytest.approx(0.4)
    assert len(FakeJudge.seen) == 3


def test_errors_name_the_problem_but_never_the_key(server):
    FakeJudge.script = [(401, f'{{"error": "bad key {SECRET}"}}')]
    with pytest.raises(JudgeError, match="HTTP 401") as info:
        judge_score("q", "a", "p", config_for(server))
    assert SECRET not in str(info.value) and "<redacted>" in str(info.value)
    FakeJudge.script = [(200, "maybe"), (200, "perhaps")]
    with pytest.raises(JudgeError, match="no score in \\[0, 1\\]") as info:
        judge_score("q2", "a", "p", config_for(server, retries=1))
    assert SECRET not in str(info.value) and SECRET not in repr(config_for(server))


def test_unreachable_and_unconfigured():
    judge._cached_score.cache_clear()
    closed = config_for("http://127.0.0.1:9/v1", retries=0)  # the discard port: refused
    with pytest.raises(JudgeError, match="cannot reach the judge at http://127.0.0.1:9/v1/chat/completions"):
        judge_score("q", "a", "p", closed)
    with pytest.raises(JudgeError, match="CLEAR_RL_JUDGE_URL"):
        JudgeConfig.from_env({})
    with pytest.raises(JudgeError, match="http"):
        JudgeConfig.from_env({judge.ENV_URL: "file:///etc/passwd", judge.ENV_MODEL: "m"})
    assert not judge.judge_configured({})


def test_parse_score():
    assert parse_score("0.5") == 0.5
    assert parse_score("Correctness: 1.0") == 1.0
    assert parse_score("false") == 0.0
    assert parse_score("7") is None and parse_score("n/a") is None
