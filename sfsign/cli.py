"""`sfsign` command line: run, check, status, jobs, envelopes, retry, render, reconcile, ltv-refresh, purge, demo.

Errors an operator can fix end with one readable message, never a traceback and never a secret, and an
exit code that says which kind (docs/operations.md, "Exit codes"): 1 `check` found a failure; 2 the
configuration cannot be loaded (a setting missing or invalid, `SFSIGN_CA_BUNDLE` empty or not a PEM file
included, or the rules file); 3 the configuration loads but `run` refuses to start on what it finds (the
fatal findings `check` reports, a login Salesforce refuses or a TLS certificate it cannot trust, a refused
subscription); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sfsign import __version__

# Everything else is imported by the command that needs it: the pool processes that render and sign
# import this module again (multiprocessing re-imports the parent's main module in every worker), and
# they must not load the Salesforce clients, the outbox and the settings they never use.
if TYPE_CHECKING:
    from sfsign.config import Rules, Settings
    from sfsign.outbox import OutboxStore


def _cmd_run(args: argparse.Namespace) -> int:
    from sfsign.ops.memory import tune_malloc

    tune_malloc()  # first: before any thread or pool process exists
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from sfsign.check import local_checks, refuse_on_failures
    from sfsign.daemon import Daemon

    settings, rules = _settings_and_rules(args)
    # In a throw-away process: rendering the sample loads Typst and the fonts (~20 MB) that belong in the
    # pool only. The org's checks follow the daemon's first login.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as once:
        refuse_on_failures(once.submit(local_checks, settings, rules).result())
    asyncio.run(Daemon(settings, rules).run())
    return 0


def _settings_and_rules(args: argparse.Namespace) -> tuple[Settings, Rules]:
    from sfsign.config import ConfigError, load_rules, load_settings
    from sfsign.ops.logging import configure_logging

    settings = load_settings(**({"rules_file": Path(args.rules)} if getattr(args, "rules", None) else {}))
    configure_logging(settings.log_level, settings.log_format)
    missing = settings.missing_credentials()
    if missing:
        raise ConfigError(f"auth flow {settings.auth_flow!r} needs: {', '.join(missing)}")
    return settings, load_rules(settings.rules_file)


def _cmd_retry(args: argparse.Namespace) -> int:
    """Re-queue `error`/`dead` jobs once their cause is fixed; a running daemon picks them up."""
    from sfsign.config import ConfigError, load_settings
    from sfsign.outbox import JobState, OutboxStore

    settings = load_settings()
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        if args.all_errors:
            targets = store.jobs(JobState.ERROR) + store.jobs(JobState.DEAD)
        else:
            job = store.by_transaction(args.transaction_id)
            if job is None:
                raise ConfigError(f"no job with transaction id {args.transaction_id!r} in {settings.data_dir}")
            targets = [job]
        for job in targets:
            try:
                again = store.requeue(job.id)
            except ValueError as exc:
                print(f"sfsign: {exc}", file=sys.stderr)
                return 1
            print(f"re-queued {again.transaction_id} ({again.sobject} {again.record_id}) at step {again.state}")
        if not targets:
            print("nothing to retry")
        return 0
    finally:
        store.close()


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from sfsign.commands.progress import ProgressLine, reconcile_with_progress

    settings, rules = _settings_and_rules(args)
    since = datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    progress = ProgressLine("reconciling") if sys.stderr.isatty() else None
    try:
        created = asyncio.run(reconcile_with_progress(settings, rules, since, progress))
    finally:
        if progress is not None:
            progress.close()
    print(f"{created} job(s) queued for records in a trigger state without a transaction id")
    return 0


def _open_existing_outbox(settings: Settings) -> OutboxStore:
    """The daemon's outbox; an operator pointing at the wrong data directory gets told, not a new empty one."""
    from sfsign.config import ConfigError
    from sfsign.outbox import OutboxStore

    path = settings.data_dir / "outbox.sqlite"
    if not path.is_file():
        raise ConfigError(f"no outbox at {path}: set SFSIGN_DATA_DIR to the daemon's data directory")
    return OutboxStore(path)


def _cmd_status(args: argparse.Namespace) -> int:
    from sfsign.commands.status import collect_status, render_status, status_json
    from sfsign.config import load_settings

    store = _open_existing_outbox(load_settings())
    try:
        report = collect_status(store)
    finally:
        store.close()
    print(json.dumps(status_json(report), indent=2) if args.json else render_status(report))
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from sfsign.commands.status import job_line, render_jobs
    from sfsign.config import load_settings
    from sfsign.outbox import JobState

    store = _open_existing_outbox(load_settings())
    try:
        jobs = store.recent_jobs(JobState(args.state) if args.state else None, limit=args.limit)
    finally:
        store.close()
    now = time.time()
    lines = [job_line(job, now) for job in jobs]
    print(json.dumps(lines, indent=2) if args.json else render_jobs(lines))
    return 0


def _cmd_envelopes(args: argparse.Namespace) -> int:
    """`sfsign envelopes list|show|void|resend` (sfsign/commands/envelopes.py) on the daemon's outbox."""
    from sfsign.config import load_settings

    store = _open_existing_outbox(load_settings())
    try:
        print(args.run(store, args))
    except (LookupError, ValueError) as exc:
        print(f"sfsign: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from sfsign.commands.preview import PreviewError, render_preview

    settings, rules = _settings_and_rules(args)
    try:
        pdf = asyncio.run(render_preview(settings, rules, args.record, args.rule))
    except PreviewError as exc:
        print(f"sfsign: {exc}", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.write_bytes(pdf)
    print(f"wrote {out} ({len(pdf):,} bytes): an unsigned preview; nothing was signed, uploaded or written back")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from sfsign.config import load_settings
    from sfsign.ops.retention import purge

    settings = load_settings()
    store = _open_existing_outbox(settings)
    try:
        result = purge(store, settings, dry_run=args.dry_run)
    finally:
        store.close()
    rows = result.rows
    per_state = ", ".join(f"{state}: {n}" for state, n in sorted(rows.jobs.items())) or "none"
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {rows.job_rows} job row(s) older than {settings.job_retention_days:g} days ({per_state}), "
          f"{rows.audit_rows} audit row(s) and {len(result.artifacts)} artifact file(s) of finished jobs "
          f"(grace {settings.artifact_grace_s:g} s); {'would purge' if args.dry_run else 'purged'} the personal "
          f"data of {result.envelopes} envelope(s) that ended more than {settings.job_retention_days:g} days ago")
    return 0


def _cmd_ltv_refresh(args: argparse.Namespace) -> int:
    from sfsign.archive import ltv_refresh_once

    settings, rules = _settings_and_rules(args)
    within = args.within_days if args.within_days is not None else settings.ltv_refresh_within_days
    queued = asyncio.run(ltv_refresh_once(settings, rules, within))
    print(f"{queued} B-LTA file(s) whose archive timestamp is due within {within:g} days queued for renewal "
          "(the daemon adds each as a new version of the same File)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from sfsign.check import as_json, render_table, run_checks

    settings, rules = _settings_and_rules(args)
    checks = asyncio.run(run_checks(settings, rules))
    if args.json:
        print(json.dumps(as_json(checks), indent=2))
    else:
        print(render_table(checks))
    return 1 if any(c.ok is False for c in checks) else 0


def _cmd_demo_keys(args: argparse.Namespace) -> int:
    """A throw-away signing PKI for trying sfsign (the rules file's paths): never for real contracts."""
    import secrets

    from sfsign.localpki.pki import create_demo_pki

    out = Path(args.out)
    passphrase = secrets.token_urlsafe(18)
    pki = create_demo_pki(out / "demo-pki", org_name=args.org, passphrase=passphrase)
    for source, target in ((pki.signer_p12_path, out / "signer.p12"), (pki.root_cert_pem_path, out / "root.pem")):
        target.write_bytes(source.read_bytes())
        target.chmod(0o600 if target.suffix == ".p12" else 0o644)
    print(f"demo signing key: {out / 'signer.p12'} (root CA: {out / 'root.pem'})")
    print("its passphrase, for the variable the rules file names (passphrase_env):")
    print(f"export SFSIGN_SIGNER_PASSPHRASE='{passphrase}'")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sfsign.commands.demo import run_demo

    return run_demo(output_dir=Path(args.output), keep_dir=Path(args.work_dir) if args.work_dir else None,
                    interactive=args.interactive, transport=args.transport)


def _cmd_emulator(args: argparse.Namespace) -> int:
    from sfsign.emulator.__main__ import serve_main

    return serve_main(args.rest)


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"sfsign {__version__}")
    return 0


RULES_HELP = "rules file (default: $SFSIGN_RULES_FILE or config/rules.yaml)"

Subcommands = argparse._SubParsersAction  # argparse names no public type for what add_subparsers returns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfsign", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_start_commands(sub)
    _add_operator_commands(sub)
    return parser


def _add_start_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """Running sfsign, trying it, and proving an org ready for it."""
    run = sub.add_parser("run", help="run the daemon against the configured org")
    run.add_argument("--rules", help=RULES_HELP)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="start the embedded Salesforce emulator and sign 6 documents end to end, "
                                       "one by a customer")
    demo.add_argument("--output", default="demo-output", help="where the signed PDFs go (default ./demo-output)")
    demo.add_argument("--work-dir", help="keep the emulator and daemon data here (default: a temporary folder)")
    demo.add_argument("--interactive", action="store_true",
                      help="sign the customer's document yourself: print its link and the mailbox, and wait")
    demo.add_argument("--transport", choices=("cometd", "pubsub"),
                      help="how the daemon receives events (default: $SFSIGN_TRANSPORT, else pubsub)")
    demo.set_defaults(func=_cmd_demo)

    keys = sub.add_parser("demo-keys", help="generate a throw-away signing key and CA for trying sfsign")
    keys.add_argument("--out", default="config/keys", help="folder (default config/keys, as the example rules)")
    keys.add_argument("--org", default="sfsign trial", help="organisation name in the certificates")
    keys.set_defaults(func=_cmd_demo_keys)

    emu = sub.add_parser("emulator", help="the embedded Salesforce emulator")
    emu.add_argument("rest", nargs=argparse.REMAINDER, help="serve [--port P] [--data-dir D] [--json-out FILE]")
    emu.set_defaults(func=_cmd_emulator)

    check = sub.add_parser("check", help="prove the org and this installation are ready (exit 1 if not)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--rules", help=RULES_HELP)
    check.set_defaults(func=_cmd_check)


def _add_operator_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """What an operator does to a running installation: its jobs, a preview, purge, reconcile, refresh."""
    from sfsign.outbox import JobState
    from sfsign.salesforce.names import Record

    retry = sub.add_parser("retry", help="re-queue failed jobs after the cause is fixed")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("transaction_id", nargs="?", help=f"the job's transaction id ({Record.TRANSACTION_ID})")
    which.add_argument("--all-errors", action="store_true", help="every job in state error or dead")
    retry.set_defaults(func=_cmd_retry)

    status = sub.add_parser("status", help="jobs per state, oldest active job, last event, API usage")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    jobs = sub.add_parser("jobs", help="the latest jobs, one line each (ids, state, attempts, last error)")
    jobs.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    jobs.add_argument("--json", action="store_true", help="machine-readable output, errors in full")
    jobs.set_defaults(func=_cmd_jobs)

    from sfsign.commands.envelopes import add_envelope_commands

    add_envelope_commands(sub).set_defaults(func=_cmd_envelopes)

    render = sub.add_parser("render", help="preview a rule's template on a real record (no signing, no upload)")
    render.add_argument("--record", required=True, help="the Opportunity or Quote id")
    render.add_argument("--rule", help="rule name (default: the first rule of the record's object)")
    render.add_argument("-o", "--output", required=True, help="where to write the unsigned PDF")
    render.add_argument("--rules", help=RULES_HELP)
    render.set_defaults(func=_cmd_render)

    purge = sub.add_parser("purge", help="delete expired job rows and artifacts now (the daemon does it hourly)")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    purge.set_defaults(func=_cmd_purge)

    reconcile = sub.add_parser("reconcile", help="queue records sitting in a trigger state without a transaction")
    reconcile.add_argument("--since", help="only records modified since (ISO date or datetime, UTC)")
    reconcile.add_argument("--rules", help=RULES_HELP)
    reconcile.set_defaults(func=_cmd_reconcile)

    refresh = sub.add_parser("ltv-refresh", help="renew the archive timestamp of B-LTA files before it expires")
    refresh.add_argument("--within-days", type=float, default=None,
                         help="renew what expires within this many days (default $SFSIGN_LTV_REFRESH_WITHIN_DAYS, 90)")
    refresh.add_argument("--rules", help=RULES_HELP)
    refresh.set_defaults(func=_cmd_ltv_refresh)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)


def main(argv: list[str] | None = None) -> int:
    from sfsign.check import StartupRefused
    from sfsign.config import ConfigError
    from sfsign.salesforce.errors import AuthError
    from sfsign.salesforce.names import SignRequest
    from sfsign.salesforce.stream import SubscriptionFailed

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StartupRefused as exc:
        print(f"sfsign: refusing to start; `sfsign check` reports the same:\n{exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"sfsign: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except AuthError as exc:
        if exc.fix:
            print(f"sfsign: cannot log in to Salesforce: {exc}\nfix: {exc.fix}", file=sys.stderr)
            return 3
        print(f"sfsign: Salesforce refused the login: {exc}\n"
              "Check SFSIGN_LOGIN_URL, the consumer key, the user and that the connected app is pre-authorized "
              "for this user (docs/salesforce-setup.md).", file=sys.stderr)
        return 3
    except SubscriptionFailed as exc:
        print(f"sfsign: Salesforce refused a subscription: {exc}\n"
              "For a /data/...ChangeEvent channel, select the object for Change Data Capture in Setup; for "
              f"/event/{SignRequest.NAME}, deploy salesforce-metadata/. Or remove the rules that need it.",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
