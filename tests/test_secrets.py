"""The judge's API key never reaches a console, a log or a file: a judge that echoes the key (and
its Authorization header) into every field of its 200, 4xx, 5xx and redirect replies, through
the judge's errors, the rules fallback's warnings, a reward's error and a whole `clear-rl eval`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import echo_judge

from clear_rl.eval import judge
from clear_rl.eval.judge import JudgeConfig, JudgeError, judge_score, judge_scores, redact
from clear_rl.models.io import save_unified
from clear_rl.rewards import load_rewards
from tests.test_input_rules import _lines

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-echo-0123456789abcdef"
TAIL = SECRET[-10:]  # a key cut short before it was redacted would still show this
REPLIES = [(200, "no_content"), (200, "null_content"), (200, "content"), (200, "not_json"), (401, "error"), (403, "not_json"),
           (429, "error"), (500, "error"), (503, "not_json"), (302, "redirect")]  # fmt: skip


def leaks(text: str) -> bool:
    return SECRET in text or TAIL in text or "Bearer sk" in text


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {judge.ENV_URL: url, judge.ENV_MODEL: "grader", judge.ENV_API_KEY: SECRET, **extra}


@pytest.mark.parametrize("status, kind", REPLIES)
def test_no_error_shows_the_key_whatever_the_reply_echoes(status, kind):
    with echo_judge([(status, kind)]) as url:
        config = JudgeConfig.from_env(env_for(url, **{judge.ENV_RETRIES: "0"}), retry_wait_s=0.0)
        with pytest.raises(JudgeError) as info:
            judge_score("q", "a", "p", config)
    message = str(info.value)
    assert not leaks(message) and not leaks(repr(info.value)), message
    shown_chain = [info.value.__cause__] + (
        [] if info.value.__suppress_context__ else [info.value.__context__]
    )
    assert not any(leaks(str(e)) for e in shown_chain if e is not None)  # what a traceback would print
    if status != 302:
        assert judge.REDACTED in message, message  # the reply is shown, redacted
    else:
        assert "redirects are not followed" in message


def test_the_rules_fallback_warning_and_a_rewards_error_never_show_it(caplog):
    with echo_judge(REPLIES * 2) as url:
        config = JudgeConfig.from_env(env_for(url, **{judge.ENV_ON_FAILURE: "rules"}), retry_wait_s=0.0)
        with caplog.at_level(logging.WARNING, logger="clear_rl"):
            assert judge_scores(["q"] * 3, ["a", "b", "c"], ["x", "y", "z"], config) == [None] * 3
        assert "LLM judge failed" in caplog.text and not leaks(caplog.text), caplog.text
    with echo_judge([(200, "content")] * 4) as url:
        for name, value in env_for(url, **{judge.ENV_RETRIES: "0"}).items():
            os.environ[name] = value
        try:
            (reward,), _ = load_rewards([{"name": "accuracy", "judge": True}])
            with pytest.raises(Exception) as info:
                reward(prompts=["p"], completions=["<answer>B</answer>"], answer=["A"])
        finally:
            for name in env_for(url):
                os.environ.pop(name, None)
    assert "rewards[0] (accuracy)" in str(info.value) and not leaks(str(info.value)), str(info.value)


def test_redact_covers_the_escaped_key_and_any_authorization_value():
    text = (
        f'{{"auth": "Bearer {SECRET}", "url": "/x?key={SECRET}"}} '
        "Authorization: Basic dXNlcjpwYXNz {'authorization': 'Token abc'} bearer other-token"
    )
    shown = redact(text, SECRET)
    assert (
        not leaks(shown) and "dXNlcjpwYXNz" not in shown and "abc" not in shown and "other-token" not in shown
    )
    assert redact("no secret here: 0.7", SECRET) == "no secret here: 0.7"


def test_a_key_with_a_line_break_is_refused_without_being_shown():
    with pytest.raises(JudgeError, match="space or a control character") as info:
        JudgeConfig.from_env(env_for("http://127.0.0.1:9/v1", **{judge.ENV_API_KEY: f"{SECRET}\r\nX: y"}))
    assert not leaks(str(info.value))


@pytest.mark.parametrize("on_failure, code", [("rules", 0), ("fail", 2)])
def test_a_whole_eval_against_an_echoing_judge_writes_and_prints_no_key(tiny, tmp_path, on_failure, code):
    model, processor = tiny
    save_unified(model, processor, tmp_path / "model")
    (tmp_path / "ShapesVQA_test.tsv").write_text("\n".join(_lines(tmp_path)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clear_rl", "eval", "--model", f"M={tmp_path / 'model'}",
               "--data", str(tmp_path / "ShapesVQA_test.tsv"), "--levels", "clean,high", "--restore", "never",
               "--max-new-tokens", "4", "--batch-size", "2", "--judge", "--out", str(out)]  # fmt: skip
    with echo_judge(REPLIES * 4) as url:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **env_for(url, **{judge.ENV_ON_FAILURE: on_failure})}
        env[judge.ENV_TIMEOUT], env[judge.ENV_RETRIES] = "5", "1"
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == code, done.stderr[-3000:]
    assert not leaks(done.stdout) and not leaks(done.stderr), done.stderr[-3000:]
    assert "LLM judge failed" in done.stderr if on_failure == "rules" else "judge at" in done.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent == out for p in written) or code  # the run wrote its report
    for path in written:
        data = path.read_bytes()
        assert SECRET.encode() not in data and TAIL.encode() not in data, path
