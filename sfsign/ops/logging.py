"""structlog set-up: JSON when not on a terminal, readable on one, and secrets never printed.

Every job binds its transaction id and record id through contextvars, so each line of a job carries
them without the code passing a logger around. Redaction is a processor at the end of the chain:
whatever a caller logs, a key that looks secret, or a value that looks like a token, is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = re.compile(r"(pass(word|phrase)?|secret|token|assertion|authorization|pin|private_?key|cookie)", re.I)
# Salesforce session ids / access tokens look like "00D...!AQ..." ; JWTs are three base64url parts.
SECRET_VALUES = [
    re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._!~+/=-]{12,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
]
MASK = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for pattern in SECRET_VALUES:
            value = pattern.sub(MASK, value)
        return value
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and SECRET_KEYS.search(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secret-looking keys and token-looking values anywhere in the event."""
    for key in list(event_dict):
        if SECRET_KEYS.search(key) and key != "event":
            event_dict[key] = MASK
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_output:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    processors += [redact, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
