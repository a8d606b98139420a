"""Process settings (environment, `.env`, secrets directory), validated at start.

Ops configure the process through `SFSIGN_*` variables, a `.env` file or a secrets directory (Docker and
Kubernetes secrets). A mistake must stop the daemon before it touches Salesforce, naming the variable
and the fix; what gets signed is the rules file's business (`rules.py`, `rules_file.py`).
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sfsign.config.errors import ConfigError
from sfsign.config.smtp import SmtpRelay, parse_mail_from, parse_smtp_url
from sfsign.salesforce.names import NotificationType, SignatureEvent

CA_BUNDLE_FIX = ("unset SFSIGN_CA_BUNDLE to trust only this machine's CAs, or set it to the PEM file of the "
                 "one extra CA to trust (a TLS-inspecting proxy's, or the emulator's ca.pem)")
SMTP_CA_BUNDLE_FIX = ("unset SFSIGN_SMTP_CA_BUNDLE to trust this machine's CAs (and SFSIGN_CA_BUNDLE's) for the "
                      "mail relay, or set it to the PEM file of the one extra CA that issued the relay's certificate")


class Settings(BaseSettings):
    """Process settings from the environment (`SFSIGN_*`), `.env` and a secrets directory."""

    model_config = SettingsConfigDict(
        env_prefix="SFSIGN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    login_url: str = Field(
        "https://login.salesforce.com",
        description="https://login.salesforce.com, https://test.salesforce.com, a My Domain URL or the emulator",
    )
    auth_flow: Literal["jwt", "client_credentials", "password"] = "jwt"
    consumer_key: str = ""
    username: str = ""
    private_key_file: Path | None = None
    consumer_secret: SecretStr | None = None
    password: SecretStr | None = None
    api_version: str = "68.0"
    ca_bundle: Path | None = Field(None, description="extra CA to trust (corporate proxy, the emulator)")
    data_dir: Path = Path(".sfsign")
    rules_file: Path = Path("config/rules.yaml")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    workers: int = Field(
        300, ge=1, le=5000,
        description="jobs in flight at once; their Salesforce calls are batched, their CPU work waits for the pool",
    )
    api_budget_share: float = Field(
        0.8, gt=0, le=1, description="above this share of the daily API allocation, non-urgent work waits"
    )
    batch_linger_s: float = Field(0.05, ge=0, le=5, description="longest wait to fill a batch while work trickles in")
    batch_linger_burst_s: float = Field(8.0, ge=0, le=60, description="longest wait to fill a batch during a burst")
    batch_linger_burst_first_s: float = Field(
        0.25, ge=0, le=60, description="while the org's daily API use is below SFSIGN_API_LATENCY_SHARE: how long "
        "a burst's first fetch waits at most for as many records as the CPU signs at once")
    api_latency_share: float = Field(
        0.5, ge=0, le=1, description="below this share of the org's daily API allocation, bursts spend calls on "
        "latency (0: never, always the long burst linger)")
    cpu_workers: int = Field(0, ge=0, le=64, description="render/sign processes; 0 = number of cores")
    pending_after_s: float = Field(
        2.0, gt=0, le=3600,
        description="a job still waiting (for a worker, a CPU slot, a batch) this long shows Pending on its record "
                    "(batched write-backs; a lone document never waits, so never costs that call)",
    )
    retry_for_h: float = Field(
        72.0, gt=0, description="a job failing transiently is retried this long (hours) before it is `dead`; "
        "a job whose file is uploaded always finishes its write-back"
    )
    max_attempts: int | None = Field(None, description="replaced by SFSIGN_RETRY_FOR_H; refused when set")
    retry_base_s: float = Field(2.0, gt=0, description="first retry delay; doubles per attempt, with jitter")
    retry_cap_s: float = Field(600.0, gt=0, description="longest delay between two attempts")
    transport: Literal["cometd", "pubsub"] = Field(
        "pubsub", description="how events arrive: pubsub (Pub/Sub API, gRPC; Salesforce's recommended) or cometd "
        "(Streaming API); docs/streaming.md says what a switch does"
    )
    pubsub_url: str = Field(
        "api.pubsub.salesforce.com:7443", description="host:port of the Pub/Sub API (443 also works; the emulator's)"
    )
    pubsub_batch: int = Field(
        100, ge=1, le=100, description="events requested per Pub/Sub subscription at a time (Salesforce's maximum "
        "is 100): the most a burst can put in memory per channel"
    )
    pubsub_keepalive_s: float = Field(
        300.0, gt=0, description="no Pub/Sub answer this long while events are requested → a new subscription "
        "(Salesforce sends a keepalive within 270 s)"
    )
    stream_long_poll_margin_s: float = Field(15.0, gt=0, description="watchdog: advice.timeout + this")
    stream_backoff_base_s: float = Field(0.5, gt=0)
    stream_backoff_cap_s: float = Field(60.0, gt=0)
    intake_max_attempts: int = Field(
        5, ge=1, le=100,
        description="attempts at an event that fails while Salesforce answers, before it is parked and its "
                    "objects reconciled (a Salesforce outage is waited out and not counted)",
    )
    intake_stuck_after_s: float = Field(
        300.0, gt=0, description="/readyz reports intake stuck when one event has been failing this long",
    )
    audit_flush_s: float = Field(
        30.0, gt=0,
        description=f"how often audit events not yet sent along with a write-back go to {SignatureEvent.NAME}",
    )
    reconcile_interval_s: float = Field(
        900.0, ge=0, description="how often to look for records in a trigger state that never got a job (a trigger "
        "the stream never delivered): one paged query per rule; 0 turns it off"
    )
    multi_currency: bool = Field(True, description="false for orgs without multi-currency (no CurrencyIsoCode)")
    notification_type: str = Field(
        NotificationType.SIGNATURE_OUTCOME, description="DeveloperName of the custom notification type the record "
        "owner is told of a refusal, an expiry or a completion by; `check` and `run` require it in the org; empty: none"
    )
    shutdown_grace_s: float = Field(20.0, ge=0)
    ltv_refresh_interval_h: float = Field(
        24.0, ge=0, description="how often to look for B-LTA files whose archive timestamp is due; 0 turns it off"
    )
    ltv_refresh_within_days: float = Field(
        90.0, gt=0, description="renew an archive timestamp this many days before its certificate expires"
    )
    ltv_delay_s: float = Field(
        2.0, ge=0, description="B-LT/B-LTA: wait before the background upgrade, so fresh documents go first"
    )
    job_retention_days: float = Field(
        30.0, gt=0, description="done/error/dead job rows (and their sent audit rows) are purged after this, and "
        "the personal data of envelopes that ended this long ago (GDPR: docs/signing-flow.md, Personal data)"
    )
    artifact_grace_s: float = Field(
        0.0, ge=0, description="rendered/signed PDFs of finished jobs are kept this long on disk, then deleted"
    )

    ops_host: str = Field(
        "127.0.0.1", description="address of /healthz, /readyz, /metrics; loopback unless set (the container: 0.0.0.0)"
    )
    ops_port: int = Field(8787, ge=-1, le=65535, description="port of the ops endpoint; 0 = any free port, -1 = off")
    # The signing pages (issue 14): a listener of their own, apart from the ops endpoint, since only they may be
    # reachable from the internet (behind a TLS-terminating proxy at `signing_url`).
    signing_url: str = Field(
        "http://127.0.0.1:8788", description="public base URL of the signing pages, as the links in the mails show it"
    )
    signing_host: str = Field("127.0.0.1", description="address the signing pages listen on (the container: 0.0.0.0)")
    signing_port: int = Field(
        8788, ge=-1, le=65535, description="port of the signing pages; 0 = any free port, -1 = off"
    )
    signing_proxy_hops: int = Field(
        0, ge=0, le=5, description="reverse proxies in front of the signing pages that append to X-Forwarded-For: the "
        "signer's address (rate limits, the signature's evidence) is read that many hops from its end; 0 = the socket"
    )
    signing_download_days: float = Field(
        7.0, ge=0, description="a completed document can be downloaded from its signing link this many days; 0 = never"
    )

    # The mail relay for customer signing (sfsign/config/smtp.py says why an unencrypted one is refused).
    smtp_url: str | None = Field(None, description="smtp://HOST:587 (STARTTLS) or smtps://HOST:465 (implicit TLS)")
    smtp_username: str | None = Field(None, description="AUTH user at the relay; the password is SFSIGN_SMTP_PASSWORD")
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(30.0, gt=0, le=300, description="connect and per-command timeout at the relay")
    smtp_ca_bundle: Path | None = Field(None, description="extra CA for the relay; default SFSIGN_CA_BUNDLE's")
    mail_from: str | None = Field(None, description='"Acme Contracts <contracts@acme.example>"')

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _no_max_attempts(cls, v: Any) -> None:
        # A count turned a few more minutes of outage into dead jobs; silently ignoring the old
        # variable would leave ops believing it still applies.
        if v is not None:
            raise ValueError("is no longer supported: failing jobs are retried by time, not by count; "
                             "remove it and set SFSIGN_RETRY_FOR_H (hours, default 72) instead")
        return None

    @field_validator("ca_bundle", "smtp_ca_bundle", mode="before")
    @classmethod
    def _ca_bundle_set(cls, v: Any, info: ValidationInfo) -> Any:
        # Path("") is ".", a directory: left alone, the first login failed as "IsADirectoryError".
        if isinstance(v, str) and not v.strip():
            raise ValueError(f"is set but empty: {_ca_fix(info)}")
        return v

    @field_validator("ca_bundle", "smtp_ca_bundle")
    @classmethod
    def _ca_bundle_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        if not v.is_file():
            raise ValueError(f"{v} is not a file: {_ca_fix(info)}")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(v))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"{v} holds no PEM certificate this machine can read ({exc}): {_ca_fix(info)}") from None
        return v

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_smtp_url(v)
        return v

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, v: str | None) -> str | None:
        if v is not None:
            parse_mail_from(v)
        return v

    @field_validator("data_dir", "rules_file", "ca_bundle", "smtp_ca_bundle", "private_key_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # One rule for every path setting: relative to the directory sfsign starts in, fixed at start.
        # (Paths inside the rules file are relative to the rules file's folder.)
        return v.absolute() if v is not None else None

    @field_validator("notification_type")
    @classmethod
    def _notification_type(cls, v: str) -> str:
        v = v.strip()
        if v and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
            raise ValueError(f"{v!r} is not a DeveloperName (letters, digits and underscores, e.g. "
                             f"{NotificationType.SIGNATURE_OUTCOME}); leave it empty to send no notifications")
        return v

    @field_validator("pubsub_url")
    @classmethod
    def _pubsub_url(cls, v: str) -> str:
        target = v.strip().removeprefix("https://").rstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", target):
            raise ValueError(f"{v!r} is not host:port: give the Pub/Sub API's address, e.g. "
                             "api.pubsub.salesforce.com:7443 (always TLS)")
        return target

    @field_validator("signing_url")
    @classmethod
    def _signing_url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", v):
            raise ValueError(f"{v!r} is not a base URL: give the public https:// address the signing pages are reached "
                             "at, e.g. https://sign.example.com")
        return v.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, v: str) -> str:
        v = v.removeprefix("v")
        if not re.fullmatch(r"\d{2}\.0", v):
            raise ValueError("api_version must look like 68.0")
        return v

    @field_validator("login_url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("login_url must be an https:// URL")
        return v.rstrip("/")

    def missing_credentials(self) -> list[str]:
        """Names of the settings the chosen auth flow still needs."""
        need: dict[str, list[str]] = {
            "jwt": ["consumer_key", "username", "private_key_file"],
            "client_credentials": ["consumer_key", "consumer_secret"],
            "password": ["consumer_key", "consumer_secret", "username", "password"],
        }
        return [f"SFSIGN_{n.upper()}" for n in need[self.auth_flow] if not getattr(self, n)]

    def smtp_relay(self) -> SmtpRelay | None:
        """The mail relay, or None when SFSIGN_SMTP_URL is unset; a ConfigError names what is missing."""
        if self.smtp_url is None:
            return None
        if self.mail_from is None:
            raise ConfigError("invalid settings:\n  SFSIGN_MAIL_FROM: is required with SFSIGN_SMTP_URL: set it to "
                              "the address mail is sent from, with a display name "
                              '("Acme Contracts <contracts@acme.example>")')
        if bool(self.smtp_username) != (self.smtp_password is not None):
            raise ConfigError("invalid settings:\n  SFSIGN_SMTP_USERNAME, SFSIGN_SMTP_PASSWORD: set both (the "
                              "relay login; the password from the secrets directory) or neither (a relay that needs "
                              "no login)")
        security, host, port = parse_smtp_url(self.smtp_url)
        return SmtpRelay(host=host, port=port, security=security, mail_from=parse_mail_from(self.mail_from),
                         timeout_s=self.smtp_timeout_s, username=self.smtp_username or None,
                         password=self.smtp_password, ca_bundle=self.smtp_ca_bundle or self.ca_bundle)


def load_settings(**overrides: Any) -> Settings:
    """Settings with the secrets directory (`SFSIGN_SECRETS_DIR`, default /run/secrets) if it exists."""
    secrets_dir = os.environ.get("SFSIGN_SECRETS_DIR", "/run/secrets")
    kwargs: dict[str, Any] = dict(overrides)
    if Path(secrets_dir).is_dir():
        kwargs["_secrets_dir"] = secrets_dir
    try:
        settings = Settings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(_settings_message(exc)) from None
    settings.smtp_relay()  # the relay settings that only make sense together, checked at start too
    return settings


def _ca_fix(info: ValidationInfo) -> str:
    return SMTP_CA_BUNDLE_FIX if info.field_name == "smtp_ca_bundle" else CA_BUNDLE_FIX


def _settings_message(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        name = "SFSIGN_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def read_secret(name: str) -> SecretStr | None:
    """A secret by name: the environment first, then the secrets directory (Docker/Kubernetes)."""
    value = os.environ.get(name)
    if value is None:
        secrets_dir = Path(os.environ.get("SFSIGN_SECRETS_DIR", "/run/secrets"))
        candidate = secrets_dir / name
        if candidate.is_file():
            value = candidate.read_text(encoding="utf-8").rstrip("\n")
    return SecretStr(value) if value is not None else None
