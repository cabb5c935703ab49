"""The configured API keys (SIDSERVE_API_KEYS, SIDSERVE_API_KEYS_FILE): read, validated and kept as
SHA-256 digests (README "Security"; sidserve.security checks requests against them).

No FastAPI here: the `sidserve` console script checks the keys before it starts the workers, and
importing FastAPI there (~0.4 s) would delay every worker's start by as much.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .settings import Settings

MIN_KEY_LENGTH = 16


class SecurityConfigError(ValueError):
    """The key configuration is unusable; the service must not start. Messages never quote a key."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_keys(text: str, separator: str, source: str) -> list[str]:
    keys = []
    for n, raw in enumerate(text.split(separator), 1):
        key = raw.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() or c == "," for c in key):
            raise SecurityConfigError(
                f"{source}: entry {n} is not a usable key (needs {MIN_KEY_LENGTH}+ characters, "
                "no spaces or commas; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        keys.append(key)
    return keys


def read_keys_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SecurityConfigError(f"SIDSERVE_API_KEYS_FILE {path}: cannot read: {e.strerror}") from None
    return _parse_keys(text, "\n", f"SIDSERVE_API_KEYS_FILE {path}")


def env_keys(settings: Settings) -> list[str]:
    if settings.api_keys is None:
        return []
    return _parse_keys(settings.api_keys.get_secret_value(), ",", "SIDSERVE_API_KEYS")


def configured_keys(settings: Settings) -> list[bytes]:
    """Digests of every configured key. Raises SecurityConfigError when none is configured and
    unauthenticated access was not explicitly allowed."""
    keys = env_keys(settings)
    if settings.api_keys_file is not None:
        keys += read_keys_file(settings.api_keys_file)
    if not keys and not settings.allow_unauthenticated:
        raise SecurityConfigError(
            "no API key configured: set SIDSERVE_API_KEYS or SIDSERVE_API_KEYS_FILE, or "
            "SIDSERVE_ALLOW_UNAUTHENTICATED=true to serve without authentication (not for production)"
        )
    return [key_digest(k) for k in keys]
