"""Settings (environment) and rules (YAML) — validated at start, with file, line and fix on error.

Ops configure the process through `SFSIGN_*` variables, a `.env` file or a secrets directory (Docker
and Kubernetes secrets); admins configure *what* gets signed in one rules file. A mistake in either
must stop the daemon before it touches Salesforce, with a message that says where and how to fix it.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sfsign.documents.model import Party
from sfsign.metadata import MetadataError, load_schema
from sfsign.salesforce.names import OWNED_FIELDS, SignatureEvent, SignRequest

# Fields sfsign itself writes: a rule watching one of them could re-trigger on our own write-back.
SFSIGN_OWNED_FIELDS = OWNED_FIELDS

# Standard fields a rule may watch. Salesforce's own schema is not in our SFDX package, so the standard
# fields of the supported objects are listed here, and a typo in one fails at load with the file and line.
# The org's own custom fields (`__c`) cannot be known offline: they pass here and are checked against
# the org's describe when the daemon starts (sfsign/rule_fields.py), as is every rule field.
STANDARD_TRIGGER_FIELDS: dict[str, frozenset[str]] = {
    "Opportunity": frozenset(
        {"StageName", "Type", "ForecastCategoryName", "IsClosed", "IsWon", "Probability", "LeadSource",
         "Amount", "CloseDate", "NextStep", "Name", "OwnerId", "AccountId", "RecordTypeId", "CampaignId",
         "Pricebook2Id", "SyncedQuoteId", "HasOpportunityLineItem", "TotalOpportunityQuantity", "ForecastCategory"}
    ),
    "Quote": frozenset(
        {"Status", "IsSyncing", "Name", "ExpirationDate", "OwnerId", "RecordTypeId", "ContactId", "Pricebook2Id",
         "GrandTotal", "TotalPrice", "Discount"}
    ),
}
FIELD_PATH = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*){0,4}$"
RECORD_TYPE_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"
#: The record type every object has; a record without a record type (made before the object had any) is one.
MASTER_RECORD_TYPE = "Master"
#: What the fetch query reads, for objects whose rules name record types, to tell a record's type.
RECORD_TYPE_PATH = "RecordType.DeveloperName"
CUSTOM_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*__c$")

BUILTIN_TEMPLATES = frozenset({"proposal", "quote", "order"})


CA_BUNDLE_FIX = ("unset SFSIGN_CA_BUNDLE to trust only this machine's CAs, or set it to the PEM file of the "
                 "one extra CA to trust (a TLS-inspecting proxy's, or the emulator's ca.pem)")


class ConfigError(ValueError):
    """A configuration mistake, phrased for the person who has to fix it."""


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
        30.0, gt=0, description="done/error/dead job rows (and their sent audit rows) are purged after this (GDPR)"
    )
    artifact_grace_s: float = Field(
        0.0, ge=0, description="rendered/signed PDFs of finished jobs are kept this long on disk, then deleted"
    )

    ops_host: str = Field(
        "127.0.0.1", description="address of /healthz, /readyz, /metrics; loopback unless set (the container: 0.0.0.0)"
    )
    ops_port: int = Field(8787, ge=-1, le=65535, description="port of the ops endpoint; 0 = any free port, -1 = off")

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _no_max_attempts(cls, v: Any) -> None:
        # A count turned a few more minutes of outage into dead jobs; silently ignoring the old
        # variable would leave ops believing it still applies.
        if v is not None:
            raise ValueError("is no longer supported: failing jobs are retried by time, not by count; "
                             "remove it and set SFSIGN_RETRY_FOR_H (hours, default 72) instead")
        return None

    @field_validator("ca_bundle", mode="before")
    @classmethod
    def _ca_bundle_set(cls, v: Any) -> Any:
        # Path("") is ".", a directory: left alone, the first login failed as "IsADirectoryError".
        if isinstance(v, str) and not v.strip():
            raise ValueError(f"is set but empty: {CA_BUNDLE_FIX}")
        return v

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_file(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not v.is_file():
            raise ValueError(f"{v} is not a file: {CA_BUNDLE_FIX}")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(v))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"{v} holds no PEM certificate this machine can read ({exc}): {CA_BUNDLE_FIX}") from None
        return v

    @field_validator("data_dir", "rules_file", "ca_bundle", "private_key_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # One rule for every path setting: relative to the directory sfsign starts in, fixed at start.
        # (Paths inside the rules file are relative to the rules file's folder.)
        return v.absolute() if v is not None else None

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


def load_settings(**overrides: Any) -> Settings:
    """Settings with the secrets directory (`SFSIGN_SECRETS_DIR`, default /run/secrets) if it exists."""
    secrets_dir = os.environ.get("SFSIGN_SECRETS_DIR", "/run/secrets")
    kwargs: dict[str, Any] = dict(overrides)
    if Path(secrets_dir).is_dir():
        kwargs["_secrets_dir"] = secrets_dir
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(_settings_message(exc)) from None


def _settings_message(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        name = "SFSIGN_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- rules


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class Pkcs11Config(_Strict):
    """A key on a PKCS#11 token (HSM, smart card, SoftHSM2). The PIN is named, never written here."""

    module: Path = Field(description="the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
    token: str = Field(min_length=1, description="token label")
    key: str = Field(min_length=1, description="label of the private key on the token")
    cert: str | None = Field(None, description="label of the certificate on the token (default: the key's label)")
    cert_file: Path | None = Field(None, description="the certificate as a file instead of on the token")
    pin_env: str = Field(pattern=_ENV_NAME, description="environment variable (or secrets file) holding the PIN")


class KeyConfig(_Strict):
    """Where the signing key lives. Passphrases and PINs are named, never written in the file."""

    pkcs12: Path | None = None
    pem_key: Path | None = None
    pem_cert: Path | None = None
    pkcs11: Pkcs11Config | None = None
    chain: list[Path] = Field(default_factory=list)
    passphrase_env: str | None = Field(
        None, description="environment variable (or secrets file) holding the passphrase"
    )

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if sum(x is not None for x in (self.pkcs12, self.pem_key, self.pkcs11)) != 1:
            raise ValueError("give exactly one of `pkcs12`, `pem_key` (+ `pem_cert`) or `pkcs11`")
        if self.pem_key and not self.pem_cert:
            raise ValueError("`pem_key` needs `pem_cert`")
        return self


class TsaConfig(_Strict):
    """RFC 3161 timestamp authorities, asked in order until one answers."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    password_env: str | None = Field(None, pattern=_ENV_NAME)
    timeout_s: float = Field(10.0, gt=0, le=120)

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"TSA URL {url!r} must start with http:// or https://")
        return urls

    @model_validator(mode="after")
    def _credentials(self) -> TsaConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both `username` and `password_env` for TSA basic authentication, or neither")
        return self


class AppearanceConfig(_Strict):
    name: str
    reason: str = "Approved for signature"
    location: str = ""
    contact: str = ""


SignatureLevelName = Literal["B-B", "B-T", "B-LT", "B-LTA"]
EidasLevel = Literal["SES", "AES", "QES"]


class ProfileConfig(_Strict):
    """How documents are signed. B-LT and B-LTA are reached as B-T on the request path (so the rep sees
    `Signed` quickly) and then upgraded in the background, as a new version of the same file."""

    key: KeyConfig
    level: SignatureLevelName = "B-LTA"
    tsa: TsaConfig | None = None
    on_tsa_failure: Literal["error", "downgrade"] = Field(
        "error",
        description="error: retry, then fail the job (default). downgrade: sign at B-B, logged and recorded",
    )
    eidas_level: EidasLevel = Field("SES", description="the eIDAS level the admin declares; written to the record")
    appearance: AppearanceConfig
    trust_roots: list[Path] = Field(default_factory=list)

    @model_validator(mode="after")
    def _level_needs(self) -> ProfileConfig:
        if self.level != "B-B" and self.tsa is None:
            raise ValueError(
                f"level {self.level} needs a timestamp authority: add `tsa: {{urls: [https://...]}}`, "
                "or set `level: B-B`"
            )
        if self.level in ("B-LT", "B-LTA") and not self.trust_roots:
            raise ValueError(
                f"level {self.level} embeds revocation data for the signer's chain: list your CA's root "
                "certificate under `trust_roots`"
            )
        return self

    @property
    def upgrades(self) -> bool:
        """The level is reached by a background upgrade after the B-T signature."""
        return self.level in ("B-LT", "B-LTA")


class SellerConfig(Party):
    """The company printed in the document header; it is the org's legal entity, not a record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="for single-currency orgs")


class RuleConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    object: str
    field: str
    values: list[str] = Field(min_length=1)
    template: str
    profile: str
    file_name: str = "{kind} {number}.pdf"
    title: str | None = None
    terms: list[str] = Field(default_factory=list)
    valid_days: int = Field(30, ge=0, le=3650)
    # Fields of the record (or its parents, e.g. Account.Segment__c) the template receives as `fields`,
    # read in the same query as the rest of the record; checked against the org's describe at start.
    fields: list[Annotated[str, StringConstraints(pattern=FIELD_PATH)]] = Field(default_factory=list, max_length=100)
    language: Literal["en", "de"] = Field("en", description="language of the document's labels, dates and numbers")
    # Record types (DeveloperName) whose records the rule signs; None: all. A record's type is read when it
    # is fetched (change events carry only changed fields); checked against the org's describe at start.
    record_types: list[Annotated[str, StringConstraints(pattern=RECORD_TYPE_NAME)]] | None = Field(
        None, min_length=1, max_length=200)

    def covers(self, record_type: str | None) -> bool:
        """Whether the rule signs a record of this record type (its DeveloperName; None: Master, as for
        records made before the object had record types)."""
        return self.record_types is None or (record_type or MASTER_RECORD_TYPE) in self.record_types


class RulesFile(_Strict):
    version: Literal[1] = 1
    seller: SellerConfig
    signing_profiles: dict[str, ProfileConfig]
    rules: list[RuleConfig] = Field(min_length=1)


@dataclass(frozen=True)
class Rules:
    """The validated rules file, with template and key paths resolved."""

    source: Path
    seller: SellerConfig
    profiles: dict[str, ProfileConfig]
    rules: list[RuleConfig]
    templates: dict[str, Path | str]  # rule name -> builtin template name or file path
    # (rule name, key) -> line in the rules file, so checks made later (against the org) name the line too
    lines: dict[tuple[str, str], int] = dataclass_field(default_factory=dict)

    def line_of(self, rule: str, key: str) -> str:
        """`file:line` of `key` in rule `rule`, for messages about the rules file."""
        line = self.lines.get((rule, key))
        return f"{self.source}:{line}" if line is not None else str(self.source)

    def for_object(self, sobject: str) -> list[RuleConfig]:
        return [r for r in self.rules if r.object == sobject]

    def fields_for(self, sobject: str) -> list[str]:
        """The fields the fetch query reads beyond sfsign's own: those the rules of `sobject` list for their
        templates, and the record type where a rule is limited to record types (only then: an org without
        record types has no such field). One query reads them for all."""
        wanted = [f for r in self.for_object(sobject) for f in r.fields]
        if self.uses_record_types(sobject):
            wanted.append(RECORD_TYPE_PATH)
        return list(dict.fromkeys(wanted))

    def uses_record_types(self, sobject: str) -> bool:
        return any(r.record_types is not None for r in self.for_object(sobject))

    def template_fields(self) -> dict[str, list[str]]:
        """Per template (as `str(templates[rule])`), the fields its rules list: sample data for checks."""
        out: dict[str, list[str]] = {}
        for rule in self.rules:
            out.setdefault(str(self.templates[rule.name]), []).extend(rule.fields)
        return out

    def by_name(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)

    def channels(self) -> list[str]:
        """CDC channels the rules need, plus the on-demand platform event channel."""
        objects = sorted({r.object for r in self.rules})
        return [f"/data/{o}ChangeEvent" for o in objects] + [f"/event/{SignRequest.NAME}"]


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping key and sequence item."""


def _yaml_with_lines(text: str, source: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                walk(v, (*path, k.value))
                lines[(*path, k.value)] = k.start_mark.line + 1  # the key's line, not its value's
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, lines


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _known_fields(metadata_dir: Path | None) -> dict[str, set[str]]:
    known = {obj: set(fields) for obj, fields in STANDARD_TRIGGER_FIELDS.items()}
    try:
        schema = load_schema(metadata_dir)
    except MetadataError:
        return known
    for obj, fields in known.items():
        if obj in schema.objects:
            fields.update(schema.objects[obj].fields)
    return known


def load_rules(path: Path, *, metadata_dir: Path | None = None) -> Rules:
    """Parse and check the rules file; every error names the file, the line and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file ({exc.strerror}); set SFSIGN_RULES_FILE") from None
    data, lines = _yaml_with_lines(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the rules file must be a mapping with `seller`, `signing_profiles`, `rules`")
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            msgs.append(f"{path}:{_line_for(lines, loc)}: {dotted}: {err['msg']}")
        raise ConfigError("\n".join(msgs)) from None

    errors: list[str] = []
    known = _known_fields(metadata_dir)
    names: set[str] = set()
    templates: dict[str, Path | str] = {}
    for i, rule in enumerate(parsed.rules):

        def at(key: str, _i: int = i) -> str:
            return f"{path}:{_line_for(lines, ('rules', _i, key))}"

        if rule.name in names:
            errors.append(f"{at('name')}: rule name {rule.name!r} is used twice; rule names must be unique")
        names.add(rule.name)
        if rule.object not in known:
            errors.append(
                f"{at('object')}: unknown object {rule.object!r}; supported: {', '.join(sorted(known))}"
            )
        elif rule.field in SFSIGN_OWNED_FIELDS:
            errors.append(
                f"{at('field')}: rule watches {rule.field!r}, which sfsign writes itself; "
                "it would re-trigger on every write-back. Watch a business field such as StageName"
            )
        elif rule.field not in known[rule.object] and not CUSTOM_FIELD.match(rule.field):
            errors.append(
                f"{at('field')}: unknown field {rule.field!r} on {rule.object}; "
                f"use one of: {', '.join(sorted(known[rule.object]))}, or a custom field of your org "
                "(its API name, ending in __c; checked against the org at start)"
            )
        if rule.profile not in parsed.signing_profiles:
            errors.append(
                f"{at('profile')}: unknown signing profile {rule.profile!r}; "
                f"defined: {', '.join(sorted(parsed.signing_profiles))}"
            )
        if rule.template in BUILTIN_TEMPLATES:
            templates[rule.name] = rule.template
        else:
            templates_dir = path.parent.resolve()
            tpath = (path.parent / rule.template).resolve()
            if not tpath.is_relative_to(templates_dir):
                # Typst reads the template and anything beside it (its root is the template's folder):
                # a path out of the configuration directory would let a rules file read any file.
                errors.append(
                    f"{at('template')}: template {rule.template!r} resolves to {tpath}, outside the "
                    f"templates directory {templates_dir} (the rules file's folder); put the .typ file there "
                    "(e.g. templates/my.typ) and name it by its path relative to the rules file"
                )
            elif not tpath.is_file():
                errors.append(
                    f"{at('template')}: unknown template {rule.template!r}: no file {tpath}; "
                    f"use a built-in template ({', '.join(sorted(BUILTIN_TEMPLATES))}) or a .typ path "
                    "relative to the rules file"
                )
            templates[rule.name] = tpath
        try:
            rule.file_name.format(kind="x", number="x", name="x", date="x", transaction_id="x", record_id="x")
        except (KeyError, IndexError, ValueError) as exc:
            errors.append(
                f"{at('file_name')}: bad placeholder {exc} in file_name; "
                "use {kind}, {number}, {name}, {date}, {transaction_id}, {record_id}"
            )
    profiles: dict[str, ProfileConfig] = {}
    for pname, profile in parsed.signing_profiles.items():
        key = profile.key
        resolved: dict[str, Any] = {}
        for attr in ("pkcs12", "pem_key", "pem_cert"):
            value = getattr(key, attr)
            if value is not None:
                resolved[attr] = (path.parent / value).resolve()
        resolved["chain"] = [(path.parent / c).resolve() for c in key.chain]
        if key.pkcs11 is not None:
            hsm = key.pkcs11
            resolved["pkcs11"] = hsm.model_copy(
                update={"cert_file": (path.parent / hsm.cert_file).resolve() if hsm.cert_file else None}
            )
        profiles[pname] = profile.model_copy(
            update={
                "key": key.model_copy(update=resolved),
                "trust_roots": [(path.parent / c).resolve() for c in profile.trust_roots],
            }
        )
        if key.passphrase_env is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.passphrase_env):
            line = _line_for(lines, ("signing_profiles", pname, "key", "passphrase_env"))
            errors.append(f"{path}:{line}: passphrase_env must be an environment variable name")
    if errors:
        raise ConfigError("\n".join(errors))
    return Rules(
        source=path,
        seller=parsed.seller,
        profiles=profiles,
        rules=list(parsed.rules),
        templates=templates,
        lines={
            (rule.name, key): _line_for(lines, ("rules", i, key))
            for i, rule in enumerate(parsed.rules)
            for key in ("name", "object", "field", "values", "fields", "record_types")
        },
    )


def read_secret(name: str) -> SecretStr | None:
    """A secret by name: the environment first, then the secrets directory (Docker/Kubernetes)."""
    value = os.environ.get(name)
    if value is None:
        secrets_dir = Path(os.environ.get("SFSIGN_SECRETS_DIR", "/run/secrets"))
        candidate = secrets_dir / name
        if candidate.is_file():
            value = candidate.read_text(encoding="utf-8").rstrip("\n")
    return SecretStr(value) if value is not None else None
