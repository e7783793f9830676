"""Rule-based answer checking, shared by the accuracy reward and the benchmark runner.

A model's output follows the CLEAR token protocol
`<think>..</think>[<image_restore>][<think>..</think>]<answer>..</answer>`; only the answer block
is judged. Multiple-choice answers are reduced to an option letter (or None when the text claims
two different letters); short answers are compared after normalisation, numbers with a
tolerance. Written by hand because no installed library does VQA answer matching; the rules
follow VLMEvalKit's `can_infer` and the VQA normalisation conventions.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Words a prediction may carry beyond the reference and still count as containing it
# ("The car is red." for "red"); more would let a list of guesses pass.
MAX_EXTRA_WORDS = 5

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
# Protocol and chat-template tokens that may survive decoding: `<image_restore>`, `<|im_end|>`.
_CONTROL_TOKEN = re.compile(r"<\|[^<>|]*\|>|</?image_restore>", re.I)

_LONE_LETTER = re.compile(r"^[\s(\[*]*([A-Z])(?:[)\].:*]|\s*$)")
_EXPLICIT_LETTER = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is)?\s*[:=]?\s*(?i:option\s*)?[(\[*]*([A-Z])(?![A-Za-z])"
)
_BRACKETED_LETTER = re.compile(r"(?<![A-Za-z])[(\[]([A-Za-z])[)\]]")
_ONLY_LETTER = re.compile(r"^\W*([A-Za-z])\W*$")
_TOKEN = re.compile(r"[A-Za-z0-9]+")

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    word: float(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer_block(text: str) -> str:
    """The content of the last `<answer>` block (an unclosed one runs to the end).

    Without an answer block: the text outside `<think>` blocks, or the whole text when nothing
    is left outside them.
    """
    text = str(text)
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return _CONTROL_TOKEN.sub(" ", blocks[-1]).strip()
    outside = _CONTROL_TOKEN.sub(" ", _THINK_BLOCK.sub(" ", text)).strip()
    return outside if outside else _CONTROL_TOKEN.sub(" ", text).strip()


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces; numbers keep '-' and '.'.

    "The Answer: 1,000.50!" -> "answer 1000.50".
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators
    text = re.sub(r"(?<=\d)\.(?=\d)", "\x00", text)  # protect decimal points
    text = re.sub(r"(?<![\w.])-(?=\d)", "\x01", text)  # protect minus signs ("x=-1"), not ranges ("3-5")
    text = re.sub(r"[^\w\s\x00\x01]|_", " ", text)
    text = text.replace("\x00", ".").replace("\x01", "-")
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def parse_number(text: str) -> float | None:
    """The number a whole answer states ("3.0", "1,000", "-2", "seven"), else None."""
    normalized = normalize_text(text)
    if normalized in _NUMBER_WORDS:
        return _NUMBER_WORDS[normalized]
    return float(normalized) if _NUMBER.fullmatch(normalized) else None


def _numbers_in(normalized: str) -> list[float]:
    return [
        _NUMBER_WORDS[word] if word in _NUMBER_WORDS else float(word)
        for word in normalized.split()
        if word in _NUMBER_WORDS or _NUMBER.fullmatch(word)
    ]


def _contains_phrase(words: list[str], phrase: list[str]) -> bool:
    span = len(phrase)
    return span > 0 and any(words[i : i + span] == phrase for i in range(len(words) - span + 1))


def _option_by_text(body: str, options: Mapping[str, str]) -> str | None:
    """The single option whose text the body states; None when none or several do."""
    normalized = normalize_text(body)
    texts = {letter: normalize_text(text) for letter, text in options.items() if normalize_text(text)}
    exact = [letter for letter, text in texts.items() if text == normalized]
    if len(exact) == 1:
        return exact[0]
    words = normalized.split()
    found = [letter for letter, text in texts.items() if _contains_phrase(words, text.split())]
    # "dark red" also contains the option "red": keep only the longest statements.
    found = [
        a for a in found if not any(a != b and texts[a] != texts[b] and texts[a] in texts[b] for b in found)
    ]
    return found[0] if len(found) == 1 else None


def _standalone_letters(body: str, valid: str) -> set[str]:
    """Capital option letters standing alone, skipping "A"/"I" used as words ("A dog", "I think")."""
    tokens = _TOKEN.findall(body)
    letters = set()
    for position, token in enumerate(tokens):
        if len(token) != 1 or token not in valid:
            continue
        following = tokens[position + 1] if position + 1 < len(tokens) else ""
        if token in "AI" and following[:1].islower():
            continue
        letters.add(token)
    return letters


def extract_choice(text: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter a prediction picks, or None when it picks none or claims two.

    Order: explicit claims (a lone leading letter "B", "(B)", "B. ..", "B) ..", phrases such as
    "the answer is B", "Answer: B", "option (B)", a bracketed "(b)", a body that is only "b");
    then the option's text; then a capital letter standing alone. Letters are limited to the
    options' keys when given.
    """
    body = extract_answer_block(text)
    valid = "".join(sorted(options)) if options else LETTERS
    claims = set(_EXPLICIT_LETTER.findall(body)) | set(_BRACKETED_LETTER.findall(body))
    claims |= set(_LONE_LETTER.findall(body)) | set(_ONLY_LETTER.findall(body))
    claims = {letter.upper() for letter in claims} & set(valid)
    if claims:
        return claims.pop() if len(claims) == 1 else None
    if options:
        by_text = _option_by_text(body, options)
        if by_text is not None:
            return by_text
    standalone = _standalone_letters(body, valid)
    return standalone.pop() if len(standalone) == 1 else None


def _answer_letter(answer: str, options: Mapping[str, str]) -> str | None:
    """The reference as an option letter: the letter itself, or the option whose text it is."""
    stripped = answer.strip().strip("()[]. ")
    if len(stripped) == 1 and stripped.upper() in options:
        return stripped.upper()
    matches = [letter for letter, text in options.items() if normalize_text(text) == normalize_text(answer)]
    return matches[0] if len(matches) == 1 else None


def _short_answer_score(prediction: str, reference: str, rel_tol: float, abs_tol: float) -> float:
    pred, ref = normalize_text(prediction), normalize_text(reference)
    if not ref:
        return 0.0
    if pred == ref:
        return 1.0
    ref_number = parse_number(reference)
    if ref_number is not None:
        numbers = set(_numbers_in(pred))
        if len(numbers) != 1:  # none, or several: no single stated value
            return 0.0
        return float(math.isclose(numbers.pop(), ref_number, rel_tol=rel_tol, abs_tol=abs_tol))
    pred_words, ref_words = pred.split(), ref.split()
    if ref in ("yes", "no"):
        said = next((word for word in pred_words if word in ("yes", "no")), None)
        return float(said == ref)
    if len(pred_words) - len(ref_words) > MAX_EXTRA_WORDS:
        return 0.0
    return float(_contains_phrase(pred_words, ref_words))


def _part_present(prediction: str, part: str, rel_tol: float, abs_tol: float) -> bool:
    """Whether one element of an `<AND>` reference appears anywhere in the prediction."""
    number = parse_number(part)
    pred = normalize_text(prediction)
    if number is not None:
        return any(math.isclose(n, number, rel_tol=rel_tol, abs_tol=abs_tol) for n in _numbers_in(pred))
    return _contains_phrase(pred.split(), normalize_text(part).split())


def score_answer(
    prediction: str,
    answer: str,
    options: Mapping[str, str] | None = None,
    *,
    rel_tol: float = 1e-3,
    abs_tol: float = 1e-6,
) -> float:
    """Score a raw model output against the reference answer, in [0, 1].

    - With `options` ({letter: text}) and a reference that is a letter (or an option's text):
      1.0 when the extracted choice is that letter, else 0.0.
    - A single capital letter as reference without options: the same, letters A..Z.
    - Otherwise a short answer: normalised exact match, numbers within `rel_tol`/`abs_tol`,
      yes/no by the first yes/no said, or the reference phrase inside a prediction at most
      MAX_EXTRA_WORDS longer. MM-Vet references: `x<OR>y` takes the best alternative,
      `x<AND>y` the fraction of elements present.
    """
    reference = str(answer).strip()
    if not reference:
        raise ValueError("score_answer needs a non-empty reference answer")
    body = extract_answer_block(prediction)
    if options:
        letter = _answer_letter(reference, options)
        if letter is not None:
            return float(extract_choice(prediction, options) == letter)
    elif len(reference) == 1 and reference in LETTERS:
        return float(extract_choice(prediction) == reference)
    if "<OR>" in reference:
        return max(
            _short_answer_score(body, alt, rel_tol, abs_tol) for alt in reference.split("<OR>") if alt.strip()
        )
    if "<AND>" in reference:
        parts = [part for part in reference.split("<AND>") if part.strip()]
        return sum(_part_present(body, part, rel_tol, abs_tol) for part in parts) / len(parts)
    return _short_answer_score(body, reference, rel_tol, abs_tol)
