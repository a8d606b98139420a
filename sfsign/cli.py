"""`sfsign` command line: run | demo | emulator serve | version.

Errors an operator can fix (configuration, credentials) end with one readable message and exit code
2; they never print a traceback, and never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sfsign import __version__
from sfsign.config import ConfigError, load_rules, load_settings
from sfsign.ops.logging import configure_logging
from sfsign.salesforce.errors import AuthError


def _cmd_run(args: argparse.Namespace) -> int:
    from sfsign.daemon import Daemon

    settings = load_settings(**({"rules_file": Path(args.rules)} if args.rules else {}))
    configure_logging(settings.log_level, settings.log_format)
    missing = settings.missing_credentials()
    if missing:
        raise ConfigError(f"auth flow {settings.auth_flow!r} needs: {', '.join(missing)}")
    rules = load_rules(settings.rules_file)
    asyncio.run(Daemon(settings, rules).run())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sfsign.demo import run_demo

    return run_demo(output_dir=Path(args.output), keep_dir=Path(args.work_dir) if args.work_dir else None)


def _cmd_emulator(args: argparse.Namespace) -> int:
    from sfsign.emulator.__main__ import serve_main

    return serve_main(args.rest)


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"sfsign {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfsign", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon against the configured org")
    run.add_argument("--rules", help="rules file (default: $SFSIGN_RULES_FILE or config/rules.yaml)")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="start the embedded Salesforce emulator and sign 5 documents end to end")
    demo.add_argument("--output", default="demo-output", help="where the signed PDFs go (default ./demo-output)")
    demo.add_argument("--work-dir", help="keep the emulator and daemon data here (default: a temporary folder)")
    demo.set_defaults(func=_cmd_demo)

    emu = sub.add_parser("emulator", help="the embedded Salesforce emulator")
    emu.add_argument("rest", nargs=argparse.REMAINDER, help="serve [--port P] [--data-dir D] [--json-out FILE]")
    emu.set_defaults(func=_cmd_emulator)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sfsign: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except AuthError as exc:
        print(f"sfsign: Salesforce refused the login: {exc}\n"
              "Check SFSIGN_LOGIN_URL, the consumer key, the user and that the connected app is pre-authorized "
              "for this user (docs/salesforce-setup.md).", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
