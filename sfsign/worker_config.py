"""The worker's knobs, in one place: the daemon fills them from `Settings` (SFSIGN_* variables).

The worker (`sfsign.worker`), its steps (`sfsign.steps`), the Salesforce gateway (`sfsign.gateway`),
the Pending notes (`sfsign.pending`) and the artifact files (`sfsign.artifacts`) each read the ones
their docstring lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sfsign.config.smtp import parse_mail_from
from sfsign.signing.tokens import LinkKeys


@dataclass
class WorkerConfig:
    artifacts_dir: Path
    concurrency: int = 4
    retry_for_s: float = 72 * 3600.0  # a job failing transiently this long is dead (unless its file is uploaded)
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    long_backoff_s: float = 900.0  # REQUEST_LIMIT_EXCEEDED: the org's allocation needs time to recover
    poll_interval_s: float = 5.0
    alert_after_attempts: int = 3
    multi_currency: bool = True
    ltv_delay_s: float = 2.0  # B-LT/B-LTA upgrades wait this long, so fresh documents go first
    artifact_grace_s: float = 0.0  # > 0: keep a done job's PDFs this long (the retention purge removes them)
    # Customer signing (`sfsign.envelope_steps`): the key the envelopes' link tokens derive from, and the
    # right-hand side of their mails' Message-IDs.
    link_keys: LinkKeys | None = None
    message_domain: str = "sfsign.localhost"
    cpu_slots: int = 4  # documents handed to the process pool at once (2 per pool process): bounded memory
    batch_linger_s: float = 0.05  # a batch waits at most this long while work trickles in ...
    batch_linger_burst_s: float = 8.0  # ... and this long during a burst, when bigger batches save API calls
    # While the org's daily API use is below `api_latency_share`, a burst spends calls on latency: its first
    # fetch waits at most `batch_linger_burst_first_s` for as many records as the CPU signs at once, its
    # first upload goes at once and its second with half of what is left (`SalesforceGateway.early`), and
    # write-backs go as the uploads return, so a rep sees the first records Signed within about a second.
    batch_linger_burst_first_s: float = 0.25
    api_latency_share: float = 0.5
    batch_settle_s: float = 0.25  # during a burst, a batch is complete once no job arrived for this long
    fetch_batch_max: int = 200
    upload_batch_max: int = 100  # files per sObject Collections request (≤ 200, ≤ 500 MB)
    write_batch_max: int = 800  # records per write-back (4 collections of 200 in one composite)
    governor_defer_s: float = 900.0  # how long non-urgent work waits while the API budget is tight
    pending_after_s: float = 2.0  # a job waiting this long since its trigger shows Pending on its record


def message_domain(mail_from: str | None) -> str:
    """The right-hand side of the envelopes' Message-IDs: the sender's domain (SFSIGN_MAIL_FROM), else a
    name that is never anybody's."""
    if not mail_from:
        return "sfsign.localhost"
    return parse_mail_from(mail_from).address.rpartition("@")[2] or "sfsign.localhost"
