"""What a name may be (release keys, containers, versions, checks, people), and text that is safe to show: on one
line, with no control characters, clipped.

Plain Python, no temporalio: the boundary types (shared.py) validate with these, and every tool prints with them.
"""

from __future__ import annotations

import re
import unicodedata

# Artifacts are files named "<container_id>-<version>", so a version holds no "-"
# and starts with a digit: the name then splits back unambiguously at its last "-".
CONTAINER_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?$")
VERSION = re.compile(r"^[0-9][A-Za-z0-9._+]{0,31}$")
RELEASE_KEY_MAX = 100
RELEASE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
APPROVER_MAX = 100
CHECK_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def printable(text: str) -> str:
    """text with its control characters escaped (a newline as \\n, an escape as \\x1b): text from a catalog or a
    person cannot draw in a terminal or fake a line of output."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def one_line(text: str) -> str:
    """text on one line: each run of white space one space, any other control character escaped."""
    return printable(" ".join(text.split()))


def clip(text: str, limit: int = 40) -> str:
    """text cut to limit characters with a visible mark, so an error never echoes a huge input back."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def check_name(value: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    """value, if it matches pattern whole and holds no ".." (names make paths); ValueError naming the rule."""
    if not pattern.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {clip(value)!r} is invalid: {rule}")
    return value


def check_container_id(value: str) -> str:
    return check_name(value, CONTAINER_ID, "container id", "use lowercase letters, digits, '.', '_' and '-'")


def check_version(value: str) -> str:
    return check_name(value, VERSION, "version", "start with a digit; letters, digits, '.', '_', '+'")


def check_release_key(key: str) -> str:
    if len(key) > RELEASE_KEY_MAX:
        raise ValueError(f"release key {clip(key)!r} is {len(key)} characters long; the limit is {RELEASE_KEY_MAX}")
    return check_name(key, RELEASE_KEY_PATTERN, "release key", "use letters, digits, '.', '_' and '-'")


def check_approver(name: str, does: str = "approves") -> str:
    """The approver's name, stripped: 1-100 printable characters, so it cannot draw fake lines in a terminal."""
    name = name.strip()
    if not name:
        raise ValueError(f"the approver is empty: say who {does}")
    if len(name) > APPROVER_MAX:
        raise ValueError(f"the approver's name is {len(name)} characters long; the limit is {APPROVER_MAX}")
    if not name.isprintable():
        raise ValueError("the approver's name holds control characters (newlines, escapes): use plain text")
    scripts = _scripts(name)
    if len(scripts) > 1 and not scripts <= _WRITTEN_TOGETHER:
        listed = ", ".join(s.title() for s in sorted(scripts))
        raise ValueError(f"the name {name!r} mixes scripts ({listed}): a look-alike of another name is refused")
    return name


# Scripts one name may mix: a Japanese name writes kanji (CJK) with kana; a Korean one hangul with hanja.
_WRITTEN_TOGETHER = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}


def _scripts(name: str) -> set[str]:
    """The scripts of name's letters, by the first word of each letter's Unicode name (LATIN, CYRILLIC, ...)."""
    return {unicodedata.name(ch, "UNKNOWN").split(" ")[0] for ch in name if ch.isalpha()}


def check_check_name(name: str) -> str:
    if not name.strip():
        raise ValueError("a check needs a name")
    if not CHECK_NAME.fullmatch(name):
        raise ValueError(
            f"check {clip(name)!r} is invalid: lowercase letters, digits, '_' and '-', at most 40, first a letter"
        )
    return name


def describe_validation_error(err: ValueError) -> str:
    """One line for a pydantic ValidationError (or any ValueError): what is wrong, where."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
