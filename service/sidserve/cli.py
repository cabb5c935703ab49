"""`sidserve`: run the service under uvicorn.

Every option has an environment variable (SIDSERVE_<OPTION>, e.g. SIDSERVE_REDIS_URL); a flag
given on the command line wins. Flags are passed to the app through those same variables, so
every uvicorn worker process sees the same settings.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn
from pydantic import ValidationError

from .keys import SecurityConfigError, configured_keys
from .settings import Settings

ENV_PREFIX = "SIDSERVE_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidserve",
        description="Serve Semantic-ID features over HTTP (FastAPI + onnxruntime + Redis).",
        epilog="Each option defaults to its environment variable, shown in brackets, then to the "
        "built-in default. Example: sidserve --bundle artifacts/bundle --redis-url redis://127.0.0.1:6379/0",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        help_text = f"{field.description} [{env}]".replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=name.upper(), help=help_text)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    for name, value in vars(args).items():
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        settings = Settings()  # validate here, so a bad option is a one-line error, not a worker crash
    except ValidationError as e:
        raise SystemExit(f"sidserve: invalid settings:\n{e}") from None
    try:
        configured_keys(settings)  # no key and no SIDSERVE_ALLOW_UNAUTHENTICATED: one line, not a worker crash
    except SecurityConfigError as e:
        raise SystemExit(f"sidserve: {e}") from None
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, workers=settings.workers, log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_s, factory=True,
    )  # fmt: skip
    uvicorn.run("sidserve.app:create_app", **options)


if __name__ == "__main__":
    main()
