"""Channel names and permission patterns (docs/protocol.md sections 1 and 8)."""

from __future__ import annotations

import re
from functools import lru_cache

from gateway.errors import BadRequest

__all__ = ["CHANNEL_RE", "MAX_CHANNEL_LENGTH", "is_valid_channel", "validate_channel", "pattern_matches"]

MAX_CHANNEL_LENGTH = 200
CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-:.@/=+]{1,200}")


def is_valid_channel(name: object) -> bool:
    """True when ``name`` is a string that is a valid channel name."""
    return isinstance(name, str) and CHANNEL_RE.fullmatch(name) is not None


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel, else raise :class:`BadRequest`."""
    if not isinstance(name, str):
        raise BadRequest("channel must be a string")
    if not is_valid_channel(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise BadRequest(f"invalid channel name {shown!r}: 1-200 of A-Z a-z 0-9 _ - : . @ / = +")
    return name


@lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def pattern_matches(pattern: str, channel: str) -> bool:
    """Glob match of a permission pattern: ``*`` any run, ``?`` one character."""
    return _compile_pattern(pattern).fullmatch(channel) is not None
