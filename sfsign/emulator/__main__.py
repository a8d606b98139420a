"""`python -m sfsign.emulator serve`: run the emulator until SIGINT/SIGTERM.

Prints what a client needs (URL, Pub/Sub API target, CA file, username, consumer key, key file) and
writes the same, plus the consumer secret and the control token, to a 0600 JSON file for tools; secrets
are never printed (the demo password is a fake and is printed on purpose).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from sfsign.emulator.server import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfsign emulator", description="Embedded Salesforce org emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the emulator on https://localhost:PORT")
    serve.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    serve.add_argument("--data-dir", type=Path, default=None, help="CA, keys and state (default: a temp dir)")
    serve.add_argument("--json-out", type=Path, default=None, help="write connection details here (0600)")
    serve.add_argument("--metadata-dir", type=Path, default=None, help="the SFDX package to load")
    serve.add_argument("--state-file", type=Path, default=None, help="keep the org's state across runs")
    serve.add_argument("--long-poll-timeout-ms", type=int, default=110000)
    serve.add_argument("--client-timeout-s", type=float, default=40.0)
    serve.add_argument("--no-seed", action="store_true", help="start with an empty org")
    serve.add_argument("--pubsub-port", type=int, default=0, help="Pub/Sub API (gRPC) port (0: any free port)")
    serve.add_argument("--pubsub-keepalive-s", type=float, default=270.0,
                       help="seconds between the Pub/Sub API's empty keepalive FetchResponses")
    serve.add_argument("--pubsub-fetch-idle-s", type=float, default=60.0,
                       help="seconds a Subscribe stream with nothing requested stays open without a FetchRequest")
    return parser


def connection_details(emulator: Emulator) -> dict[str, Any]:
    """Everything a client or a tool needs to talk to the emulator (includes secrets: file only)."""
    login = emulator.login
    return {
        "url": emulator.url,
        "pubsub_target": emulator.pubsub_target,
        "ca_file": str(emulator.ca_file),
        "username": login.username,
        "consumer_key": login.consumer_key,
        "consumer_secret": login.consumer_secret.get_secret_value(),
        "password": login.password.get_secret_value(),
        "security_token": login.security_token.get_secret_value(),
        "private_key_file": str(login.private_key_file),
        "certificate_file": str(login.certificate_file),
        "control_token": emulator.control_token,
        "org_id": emulator.org.org_id,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(path, 0o600)


async def _serve(args: argparse.Namespace, data_dir: Path) -> None:
    emulator = Emulator(
        data_dir=data_dir,
        metadata_dir=args.metadata_dir,
        long_poll_timeout_ms=args.long_poll_timeout_ms,
        client_timeout_s=args.client_timeout_s,
        port=args.port,
        seed=not args.no_seed,
        state_file=args.state_file,
        pubsub_port=args.pubsub_port,
        pubsub_keepalive_s=args.pubsub_keepalive_s,
        pubsub_fetch_idle_s=args.pubsub_fetch_idle_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with emulator:
        login = emulator.login
        print(f"Salesforce emulator: {emulator.url}")
        print(f"Pub/Sub API (gRPC):  {emulator.pubsub_target} (TLS, same CA)")
        print(f"CA file:             {emulator.ca_file}")
        print(f"Username:            {login.username}")
        print(f"Consumer key:        {login.consumer_key}")
        print(f"JWT key file:        {login.private_key_file}")
        print(f"Demo password:       {login.password.get_secret_value()} (+ security token, see JSON file)")
        if args.json_out is not None:
            _write_json(args.json_out, connection_details(emulator))
            print(f"Details (JSON):      {args.json_out}")
        sys.stdout.flush()
        await stop.wait()


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m sfsign.emulator` and `sfsign emulator` (argv without the program)."""
    args = _parser().parse_args(argv)
    if args.command != "serve":  # pragma: no cover - argparse enforces the choice
        return 2
    if args.data_dir is not None:
        asyncio.run(_serve(args, args.data_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="sfsign-emulator-") as tmp:
            asyncio.run(_serve(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
