"""User-facing errors: one line that names what was wrong and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration or input mistake; the message is a single line meant for the user."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """Build the error for ``value`` not being one of ``choices``, with the closest match named."""
    options = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} '{value}'{hint}; valid: {', '.join(options)}")
