"""Rule-based answer checking, shared by the accuracy reward and the benchmark runner.

A model's output follows the CLEAR token protocol
`<think>..</think>[<image_restore>][<think>..</think>]<answer>..</answer>`; only the answer block
is judged. Multiple-choice answers are reduced to an option letter, and the rules never guess: a
text that names two option letters without committing to one ("A or B", "A and B"), or only
repeats the option list, gives no letter (the LLM judge, when enabled, then decides). A text that
commits to one letter and names the others only to reject them ("B, not A", "**C**; A is wrong",
"B\n(an explanation naming A)") gives the letter it commits to, as a careful reader takes it. Short answers are
compared after normalisation, numbers with a tolerance (and their unit, when both sides state a
known one). Written by hand because no installed library does VQA answer matching; the rules
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

# Markdown emphasis and code marks carry no meaning for the answer: "**B**", "`C`", "### Answer".
_MARKUP = re.compile(r"[*`#]+")
# A letter reference: bracketed in either case "(b)", a capital standing alone "B", or a lower-case
# letter closed by punctuation "c)" (so the article in "the answer is a dog" is not one).
_LETTER = r"(?:[(\[]\s*(?P<{0}>[A-Za-z])\s*[)\]]|(?P<{0}c>[A-Z])(?![A-Za-z0-9'])|(?P<{0}l>[a-z])(?=\s*(?:[).:,;!?]|$)))"
# "the answer is B", "Answer: (c)", "the correct choice is c)", "my final answer would be **D**",
# "I choose B". A bare "option C" mid-text is a mention, not a claim ("option C is unlikely").
_PHRASE_CLAIM = re.compile(
    r"(?i:\b(?:(?:final\s+|correct\s+|right\s+|best\s+)?answer|(?:final|correct|right|best)\s+(?:option|choice)"
    r"|(?:choose|pick|select|go\s+with))"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?\s*[:=\-]?\s*(?:option\s*|choice\s*)?)"
    + _LETTER.format("p"),
)
# A claim the body opens with: "B", "(B)", "B. dog", "b) dog", "B:", "A\n(explanation)", "B, because",
# "A is the answer", "C would be correct".
_LEADING_CLAIM = re.compile(
    r"^\s*(?i:(?:option|choice|answer)\s*[:=\-]?\s*)?(?:"
    r"[(\[]\s*(?P<b>[A-Za-z])\s*[)\]]"
    r"|(?P<p>[A-Za-z])\s*[).:](?![A-Za-z0-9])"
    r"|(?P<w>[A-Za-z])\s*$"
    r"|(?P<n>[A-Z])[ \t]*(?:\n|[,;]|\s-\s)"
    r"|(?P<v>[A-Z])\s+(?:is|would\s+be|should\s+be|seems|appears|looks|because|since)\b"
    r")"
)
_BRACKETED = re.compile(r"(?<![A-Za-z0-9])[(\[]\s*([A-Za-z])\s*[)\]]")
# A letter set in bold ("**B**", "__(c)__"): an answer's commitment, as markdown writes it.
_BOLD = re.compile(r"(\*\*|__)\s*[(\[]?\s*([A-Za-z])\s*[)\].:]?\s*\1")
# What makes a named letter a rejection: "not A", "rather than (B)", "unlike A", "rule out C" before
# it ("not A or B" rejects both); "A is wrong", "B isn't", "C can be ruled out", "A and B are
# incorrect" after it.
_REJECT_BEFORE = re.compile(
    r"(?i:\b(?:not|neither|nor|never|rather\s+than|instead\s+of|unlike|other\s+than|than|rules?\s+out"
    r"|ruled\s+out|eliminat(?:e|es|ed|ing))\s*(?:(?:options?|choices?|answers?)\s*)?"
    r"(?:[(\[]?\s*[A-Za-z]\s*[)\]]?\s*(?:,|or|and|nor)\s*)*)$"
)
_REJECT_AFTER = re.compile(
    r"^(?i:(?:\s*(?:,|and|or|nor)\s*(?:options?\s*)?(?:[(\[]\s*[a-z]\s*[)\]]|[A-Z](?![A-Za-z0-9'])))*[ \t]*"
    r"(?:(?:is|are|was|were|seems|seem|looks|appears|(?:would|must|can|could|should)[ \t]+be)[ \t]+"
    r"(?:not\b|wrong|incorrect|false|unlikely|impossible|ruled[ \t]+out|eliminated|excluded)"
    r"|isn't|aren't|wasn't|weren't|can't|cannot|doesn't|does[ \t]+not|fails?\b"
    r"|wrong|incorrect|false|ruled[ \t]+out|eliminated|excluded))"
)
_CAPITAL = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
# Words that follow an option letter but never the article "A" / the pronoun "I": "A or B",
# "A is right", "Both A and B"; any other lower-case word after "A" makes it the article ("A dog").
_AFTER_LETTER_A = frozenset(
    "or and nor but is are was were would should could must might may will seems seem looks "
    "appears matches fits then vs versus because since as if too also only instead".split()
)
_AFTER_LETTER_I = frozenset({"or", "and", "nor"})

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    word: float(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Units a number may carry, by their spellings: compared when both answers state one ("5 cm" is
# not "5 m"); any other word after a number is not a unit ("7 cats").
_UNITS = {
    spelling: unit
    for unit, spellings in {
        "mm": "mm millimeter millimeters millimetre millimetres",
        "cm": "cm centimeter centimeters centimetre centimetres",
        "m": "m meter meters metre metres",
        "km": "km kilometer kilometers kilometre kilometres",
        "in": "inch inches",
        "ft": "ft foot feet",
        "mi": "mile miles",
        "g": "g gram grams",
        "kg": "kg kilogram kilograms",
        "lb": "lb lbs pound pounds",
        "s": "s sec second seconds",
        "min": "min minute minutes",
        "h": "h hr hour hours",
        "percent": "percent",
        "degrees": "degree degrees",
        "years": "year years",
    }.items()
    for spelling in spellings.split()
}


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
    text = re.sub(r"(?<=\d)(?=[a-z])", " ", text)  # "5cm" -> "5 cm"
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


def _value(word: str) -> float | None:
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    return float(word) if _NUMBER.fullmatch(word) else None


def _quantities_in(normalized: str) -> list[tuple[float, str | None]]:
    """Every (number, unit or None) a normalised answer states, in order."""
    words = normalized.split()
    found = []
    for i, word in enumerate(words):
        value = _value(word)
        if value is not None:
            found.append((value, _UNITS.get(words[i + 1]) if i + 1 < len(words) else None))
    return found


def _numbers_in(normalized: str) -> list[float]:
    return [value for value, _ in _quantities_in(normalized)]


def _quantity(text: str) -> tuple[float, str | None] | None:
    """The (number, unit) a whole answer states ("5", "5 cm", "seven"), else None ("7 cats")."""
    normalized = normalize_text(text)
    number = parse_number(normalized)
    if number is not None:
        return number, None
    words = normalized.split()
    if len(words) == 2 and words[1] in _UNITS and _value(words[0]) is not None:
        return _value(words[0]), _UNITS[words[1]]
    return None


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


def _letter_of(match: re.Match) -> str:
    """The letter a `_LETTER`-style match caught, upper-cased (whichever alternative matched)."""
    return next(group for group in match.groups() if group).upper()


def _is_word(letter: str, rest: str) -> bool:
    """Whether a standing-alone "A" or "I" is the article or the pronoun ("A dog", "I think"),
    judged by the lower-case word after it; any other letter is never a word."""
    if letter not in "AI":
        return False
    following = _NEXT_WORD.match(rest)
    if following is None:
        return False
    return following.group(1) not in (_AFTER_LETTER_A if letter == "A" else _AFTER_LETTER_I)


def _echoes(body: str, options: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """Spans (start, end, letter) where the body states an option with its own text ("B. dog")."""
    spans = []
    for letter, text in options.items():
        words = str(text).split()
        if not words:
            continue
        phrase = r"\s+".join(re.escape(w) for w in words)
        # The letter with its mark ("B.", "(B)", "B)"), so "a cat" (an article) is no echo of A.
        pattern = (
            rf"(?<![A-Za-z0-9])(?:[(\[]\s*{letter}\s*[)\]]|{letter}\s*[).:\-])\s*{phrase}(?![A-Za-z0-9])"
        )
        spans += [(m.start(), m.end(), letter) for m in re.finditer(pattern, body, re.I)]
    return spans


def _without_echoed_options(body: str, options: Mapping[str, str] | None) -> str:
    """The body less a listing of the options ("A. cat B. dog C. bird"): two or more options
    stated with their own text are a repeat of the question, not a claim, and are cut out."""
    if not options:
        return body
    spans = _echoes(body, options)
    if len({letter for _, _, letter in spans}) < 2:
        return body
    for start, end, _ in sorted(spans, reverse=True):
        body = body[:start] + " " + body[end:]
    return body


def _letters_named(body: str, valid: str, options: Mapping[str, str] | None) -> set[str]:
    """Every option letter the body names: bracketed in either case, or a capital standing alone
    that is not the article "A" / pronoun "I", nor part of an option's own text ("Plan B")."""
    masked = body
    for text in (options or {}).values():
        if _CAPITAL.search(str(text)) and len(str(text).strip()) > 1:
            masked = masked.replace(str(text).strip(), " ")
    named = {letter.upper() for letter in _BRACKETED.findall(masked)}
    for match in _CAPITAL.finditer(masked):
        if not _is_word(match.group(1), masked[match.end() :]):
            named.add(match.group(1))
    return named & set(valid)


def _claims(body: str, valid: str) -> set[str]:
    """Letters the body explicitly claims: the one it opens with, and "answer/option/choice X"."""
    claims = {
        _letter_of(m)
        for m in _PHRASE_CLAIM.finditer(body)
        if not (m.group("pc") and _is_word(m.group("pc"), body[m.end() :]))  # "Answer: A dog"
    }
    leading = _LEADING_CLAIM.match(body)
    if leading is not None:
        letter = _letter_of(leading)
        if not _is_word(letter, body[leading.start(leading.lastgroup) + 1 :]):
            claims.add(letter)
    return claims & set(valid)


def _rejected(body: str, valid: str) -> set[str]:
    """Letters the body names to reject ("not A", "B is wrong", "unlike (c)", "A and B are wrong")."""
    found = set()
    for pattern in (_BRACKETED, _CAPITAL):
        for match in pattern.finditer(body):
            letter = match.group(1).upper()
            if letter in valid and (
                _REJECT_BEFORE.search(body[: match.start()]) or _REJECT_AFTER.match(body[match.end() :])
            ):
                found.add(letter)
    return found


def _on_its_own_line(body: str, letter: str, valid: str, options: Mapping[str, str] | None) -> bool:
    """Whether the body opens with `letter` alone on its first line (its option text may follow)
    and no later line commits to another letter (a claim phrase, or a letter alone on its line):
    what follows is an explanation."""
    lines = [line for line in body.splitlines() if line.strip()]
    if len(lines) < 2:
        return False

    def alone(line: str, which: str) -> bool:
        text = str((options or {}).get(which, "")).strip()
        if text:
            line = re.sub(re.escape(text), " ", line, flags=re.I)
        mark = rf"\s*(?i:(?:option|choice|answer)\s*[:=\-]?\s*)?[(\[]?\s*(?i:{which})\s*[)\]]?\s*[.:)\-]?\s*"
        return re.fullmatch(mark, line) is not None

    if not alone(lines[0], letter):
        return False
    for line in lines[1:]:
        phrased = {_letter_of(m) for m in _PHRASE_CLAIM.finditer(line)} & set(valid)
        if phrased - {letter} or any(alone(line, other) for other in valid if other != letter):
            return False
    return True


def extract_choice(text: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter a prediction picks, or None when it picks none, names several without
    committing to one, or only repeats the options.

    Reading: a listing of two or more options with their own texts is cut out. A commitment is
    the letter the body opens with ("B", "(b)", "B. dog", "A is the answer", "B\n..."), a claim
    ("the answer is C", "Option (C)", "the correct choice is c)") or a letter in bold; a letter
    the body rejects ("not A", "A is wrong", "unlike A", "rather than A") is no commitment. One
    commitment wins when every other letter named is rejected, or when it stands alone on the
    first line with only an explanation after it; it also wins over option texts the explanation
    mentions. Without a commitment: the one option whose text the body states (in any case), unless
    a letter of another option is named and not rejected; then a lone named letter. Two
    commitments, or two letters named without one ("A or B", "A and B"), give None. Letters are
    limited to the options' keys when given.
    """
    raw = extract_answer_block(text)
    valid = "".join(sorted(options)) if options else LETTERS
    bold = {m.group(2).upper() for m in _BOLD.finditer(raw)} & set(valid)
    body = _without_echoed_options(_MARKUP.sub("", raw).strip(), options)
    named = _letters_named(body, valid, options)
    rejected = _rejected(body, valid)
    commitments = (_claims(body, valid) | bold) - rejected
    if len(commitments) > 1:
        return None
    if commitments:
        letter = next(iter(commitments))
        if named - {letter} <= rejected or _on_its_own_line(body, letter, valid, options):
            return letter
        return None
    live = named - rejected
    if len(live) > 1:
        return None
    by_text = _option_by_text(body, options) if options else None
    if by_text is not None:
        return by_text if live <= {by_text} else None
    return live.pop() if live else None


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
    quantity = _quantity(reference)
    if quantity is not None:
        stated = _quantities_in(pred)
        numbers = {value for value, _ in stated}
        if len(numbers) != 1:  # none, or several: no single stated value
            return 0.0
        units = {unit for _, unit in stated if unit}
        if quantity[1] and units and quantity[1] not in units:  # "5 m" for "5 cm"
            return 0.0
        return float(math.isclose(numbers.pop(), quantity[0], rel_tol=rel_tol, abs_tol=abs_tol))
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
