"""The rules file's model: what an admin may write (seller, signing profiles, rules) and `Rules`, the
validated whole the daemon reads.

The shapes and their per-field checks live here; reading the YAML, naming the line of a mistake and the
checks across entries (unique names, known objects, fields, templates, profiles) are `rules_file.py`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from sfsign.config.signers import SignersConfig
from sfsign.documents.model import Party
from sfsign.salesforce.names import OWNED_FIELDS, SignRequest

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
    # Who signs after the document is rendered (customer signing); None: sealed only, as before.
    signers: SignersConfig | None = None

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
