"""`sfsign envelopes list | show | void | resend`: the operator's view of customer signing, over the outbox file.

Like `sfsign status` it works beside a running daemon (SQLite WAL) and never reaches Salesforce: a void or a
resend is a step in the outbox (the voided notices and the new invitation go out through its mail queue
when the mailer drains it). People are shown by recipient number, step and Salesforce id, never by name or
address, as `sfsign status` does (GDPR); the outbox keeps those.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from tabulate import tabulate

from sfsign.outbox import OutboxStore
from sfsign.outbox.envelope_models import Envelope, EnvelopeEvent, Recipient
from sfsign.signing.model import EnvelopeState, RecipientState

DETAIL_WIDTH = 70


def add_envelope_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """`sfsign envelopes …`, returned so the command line sets how it runs; each subcommand's `run` takes the
    opened outbox and the arguments and returns what to print."""
    envelopes = sub.add_parser("envelopes", help="customer signing: list, show, void, resend envelopes")
    which = envelopes.add_subparsers(dest="envelopes_command", required=True)
    listing = which.add_parser("list", help="the latest envelopes, one line each")
    listing.add_argument("--state", choices=[s.value for s in EnvelopeState], help="only envelopes in this state")
    listing.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    listing.set_defaults(run=list_envelopes)
    show = which.add_parser("show", help="one envelope: its recipients and its timeline")
    show.add_argument("transaction_id")
    show.set_defaults(run=show_envelope)
    void = which.add_parser("void", help="end a live envelope: its links die, the recipients are told")
    void.add_argument("transaction_id")
    void.add_argument("--reason", required=True, help="why (on the timeline and in the mail)")
    void.set_defaults(run=void_envelope)
    resend = which.add_parser("resend", help="send a recipient's invitation again (same link, new mail)")
    resend.add_argument("transaction_id")
    resend.add_argument("--recipient", type=int, required=True, help="the recipient number `show` lists")
    resend.set_defaults(run=resend_invitation)
    return envelopes


def list_envelopes(store: OutboxStore, args: argparse.Namespace) -> str:
    rows = []
    for envelope in store.envelopes(EnvelopeState(args.state) if args.state else None, limit=args.limit):
        people = store.recipients(envelope.id)
        signed = sum(1 for r in people if r.state is RecipientState.SIGNED)
        rows.append([envelope.transaction_id, envelope.sobject, envelope.record_id, envelope.state.value,
                     f"{signed} of {len(people)}", f"{envelope.current_step}/{envelope.steps}",
                     _time(envelope.sent_at), _time(envelope.expires_at)])
    if not rows:
        return "no envelopes"
    return tabulate(rows, headers=["transaction", "object", "record", "state", "signed", "step", "sent", "expires"])


def show_envelope(store: OutboxStore, args: argparse.Namespace) -> str:
    envelope = _envelope(store, args.transaction_id)
    head = [
        f"envelope {envelope.transaction_id}: {envelope.state.value} ({envelope.sobject} {envelope.record_id}, "
        f"rule {envelope.rule})",
        f"step {envelope.current_step} of {envelope.steps}; auth {envelope.auth_method.value}; "
        f"language {envelope.language}; sent {_time(envelope.sent_at)}; expires {_time(envelope.expires_at)}"
        + (f"; ended {_time(envelope.ended_at)}" if envelope.ended_at else ""),
    ]
    if envelope.reason:
        head.append(f"reason: {envelope.reason}")
    if envelope.purged_at is not None:
        head.append(f"personal data purged {_time(envelope.purged_at)} (SFSIGN_JOB_RETENTION_DAYS after it ended): "
                    "the recipients' names, addresses and Salesforce ids, IP addresses, user agents, reasons and "
                    "relay replies are gone; states, counts, times and hashes are kept, the evidence is in Salesforce")
    people = tabulate([_recipient_row(r) for r in store.recipients(envelope.id)],
                      headers=["#", "step", "state", "source", "salesforce id", "invited", "signed", "mail error"])
    events = tabulate([_event_row(e) for e in store.timeline(envelope.id)],
                      headers=["time", "event", "#", "ip", "detail"])
    return "\n".join([*head, "", "recipients:", people, "", "timeline:", events])


def void_envelope(store: OutboxStore, args: argparse.Namespace) -> str:
    before = _envelope(store, args.transaction_id)
    after = store.void(before.transaction_id, args.reason, time.time(), actor="sfsign envelopes void")
    if before.ended:
        return f"envelope {after.transaction_id} had ended already ({after.state.value}): nothing changed"
    return f"voided envelope {after.transaction_id}; its links no longer work and its recipients will be told"


def resend_invitation(store: OutboxStore, args: argparse.Namespace) -> str:
    envelope = _envelope(store, args.transaction_id)
    mail = store.resend(envelope.transaction_id, args.recipient, time.time(), actor="sfsign envelopes resend")
    return f"invitation to recipient #{args.recipient} queued again (Message-ID {mail.message_id}), same link"


def _envelope(store: OutboxStore, transaction_id: str) -> Envelope:
    envelope = store.envelope(transaction_id)
    if envelope is None:
        raise LookupError(f"no envelope with transaction id {transaction_id!r}")
    return envelope


def _recipient_row(r: Recipient) -> list[object]:
    return [r.id, r.step, r.state.value, r.source.value, r.salesforce_id or "", _time(r.invited_at),
            _time(r.signed_at), (r.mail_error or "")[:DETAIL_WIDTH]]


def _event_row(e: EnvelopeEvent) -> list[object]:
    return [_time(e.at), e.type.value, e.recipient_id or "", e.ip or "", (e.detail or "")[:DETAIL_WIDTH]]


def _time(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at is not None else ""
