"""A rule's `signers:` block: who signs the rule's document after it is rendered, in what order, how they
prove who they are, when the envelope expires and what expiry does to the record.

A rule without the block seals only, exactly as before customer signing existed. The shapes and the checks
one block can make alone live here; what depends on the rule (an entry the rule's object cannot have, an
expiry stage that would re-trigger the rule) is `signer_problems`, which the rules file calls with the
line of each key; what depends on the org (the picklist, the users) is the start check's
(`sfsign/check/signers.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sfsign.signing.model import AuthMethod, SignerSource

#: `contact_role: primary`: the Opportunity's primary contact role, whatever its role name.
PRIMARY = "primary"
#: A Salesforce user id (key prefix 005), 15 or 18 characters.
USER_ID = re.compile(r"^005[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")
#: Salesforce usernames have the form of an e-mail address (they need not be a mailbox).
USERNAME = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Which signer sources each object's rules may use (a `user:` counter-signer fits every object).
SOURCES_BY_OBJECT: dict[str, frozenset[SignerSource]] = {
    "Opportunity": frozenset({SignerSource.CONTACT_ROLE, SignerSource.USER}),
    "Quote": frozenset({SignerSource.QUOTE_CONTACT, SignerSource.QUOTE_EMAIL, SignerSource.USER}),
}
#: The key of `on_expiry` per object, and the field it names (the stage or the status of the record).
EXPIRY_KEYS: dict[str, tuple[str, str]] = {"Opportunity": ("stage", "StageName"), "Quote": ("status", "Status")}
ENTRY_FORMS = ("{contact_role: primary}, {contact_role: <role name>}, {quote_contact: true}, {quote_email: true} "
               "or {user: <username or 005 id>}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignerEntry(_Strict):
    """One signer of a step, named by where the record keeps them. Exactly one key per entry."""

    contact_role: str | None = Field(None, min_length=1, max_length=255,
                                     description="`primary`, or a Role value of the Opportunity's contact roles")
    quote_contact: bool | None = Field(None, description="the Quote's contact (Quote.ContactId)")
    quote_email: bool | None = Field(None, description="the Quote's e-mail (Quote.Email), named by BillingName")
    user: str | None = Field(None, description="a fixed internal counter-signer: a User's username or 005 id")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """An unknown key (`contact: primary`) is answered with the forms a signer may take."""
        if isinstance(data, dict):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                keys = ", ".join(map(repr, unknown))
                raise ValueError(f"unknown key {keys}; a signer is exactly one of {ENTRY_FORMS}")
        elif not isinstance(data, SignerEntry):
            raise ValueError(f"a signer is a mapping, exactly one of {ENTRY_FORMS}")
        return data

    @model_validator(mode="after")
    def _one_key(self) -> SignerEntry:
        given = [k for k in ("contact_role", "quote_contact", "quote_email", "user") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a signer is exactly one of {ENTRY_FORMS}; this entry gives "
                             f"{', '.join(given) or 'none of them'}")
        if self.quote_contact is False or self.quote_email is False:
            raise ValueError(f"write `{given[0]}: true`, or remove the entry")
        if self.user is not None and not (USER_ID.match(self.user) or USERNAME.match(self.user)):
            raise ValueError(f"user {self.user!r} is neither a username (name@company.example) nor a user id "
                             "(005…); copy the username from Setup > Users")
        return self

    @property
    def source(self) -> SignerSource:
        if self.contact_role is not None:
            return SignerSource.CONTACT_ROLE
        if self.quote_contact:
            return SignerSource.QUOTE_CONTACT
        if self.quote_email:
            return SignerSource.QUOTE_EMAIL
        return SignerSource.USER

    @property
    def is_primary(self) -> bool:
        """`contact_role: primary`: the primary contact role rather than a role name."""
        return self.contact_role == PRIMARY

    def describe(self) -> str:
        """The entry as the admin wrote it, for messages."""
        if self.contact_role is not None:
            return "the primary contact role" if self.is_primary else f"contact role {self.contact_role!r}"
        if self.user is not None:
            return f"user {self.user!r}"
        return "the quote's contact" if self.quote_contact else "the quote's e-mail"


class ReminderConfig(_Strict):
    """Reminders to whoever has not signed yet: the first `first_after_days` after the invitation, then every
    `every_days`, at most `max` (the day-3/day-5 pattern by default). `reminders: off` sends none."""

    first_after_days: int = Field(3, ge=1, le=365)
    every_days: int = Field(2, ge=1, le=365)
    max: int = Field(2, ge=0, le=20)

    def due_days(self, expires_after_days: int) -> list[int]:
        """The days after the invitation a reminder goes out: none on or after the expiry day."""
        days = (self.first_after_days + n * self.every_days for n in range(self.max))
        return [d for d in days if d < expires_after_days]


class ExpiryAction(_Strict):
    """What expiry does to the record besides status `Expired`: move an Opportunity to `stage`, or a Quote
    to `status` (a value of the object's picklist, checked against the org at start)."""

    stage: str | None = Field(None, min_length=1, max_length=255)
    status: str | None = Field(None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _one_key(self) -> ExpiryAction:
        if (self.stage is None) == (self.status is None):
            raise ValueError("give `stage:` (an Opportunity's StageName value) or `status:` (a Quote's Status "
                             "value), not both; or remove `on_expiry` to leave the stage as it is")
        return self

    @property
    def value(self) -> str:
        return self.stage if self.stage is not None else self.status or ""


class SignersConfig(_Strict):
    """Who signs, in what order, and the envelope's terms (see docs/signing-flow.md, "Configuring signers")."""

    order: Literal["sequential", "parallel"] = Field(
        "sequential", description="sequential: steps in order, the signers of one step in parallel; "
        "parallel: every signer of every step at once")
    steps: list[list[SignerEntry]] = Field(min_length=1, max_length=10)
    authentication: AuthMethod = AuthMethod.EMAIL_OTP
    expires_after_days: int = Field(30, ge=1, le=365)
    reminders: ReminderConfig | None = Field(default_factory=lambda: ReminderConfig.model_validate({}))
    on_expiry: ExpiryAction | None = None
    seal: Literal["before_sending", "after_signing"] = Field(
        "before_sending", description="the seller's seal before the invitations go out, or after the last signature")
    attach_completed: bool = Field(True, description="the completed PDF attached to the completion mail")

    @field_validator("steps", mode="before")
    @classmethod
    def _step_as_list(cls, steps: Any) -> Any:
        """A step of one signer may be written without brackets: `- {contact_role: primary}`."""
        if isinstance(steps, list):
            return [[s] if isinstance(s, dict) else s for s in steps]
        return steps

    @field_validator("steps")
    @classmethod
    def _steps_not_empty(cls, steps: list[list[SignerEntry]]) -> list[list[SignerEntry]]:
        for n, step in enumerate(steps, 1):
            if not step:
                raise ValueError(f"step {n} names no signer; list at least one, or remove the step")
            if len(step) > 10:
                raise ValueError(f"step {n} names {len(step)} signers; at most 10 sign in one step")
        return steps

    @field_validator("reminders", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """`reminders: off` (which YAML reads as false) or `none`: no reminders."""
        if value is False or (isinstance(value, str) and value.lower() in ("off", "none", "no")):
            return None
        if value is True:
            return {}
        return value

    @model_validator(mode="after")
    def _reminders_before_expiry(self) -> SignersConfig:
        if self.reminders is not None and self.reminders.max and \
                self.reminders.first_after_days >= self.expires_after_days:
            raise ValueError(
                f"the first reminder (day {self.reminders.first_after_days}) would come on or after expiry "
                f"(day {self.expires_after_days}); lower reminders.first_after_days, raise expires_after_days, "
                "or write `reminders: off`")
        return self

    def entries(self) -> list[tuple[int, int, SignerEntry]]:
        """(step index, entry index, entry), 0-based as in the file."""
        return [(s, e, entry) for s, step in enumerate(self.steps) for e, entry in enumerate(step)]

    def users(self) -> list[str]:
        """The counter-signing users the block names (usernames or ids), in order, each once."""
        return list(dict.fromkeys(e.user for _, _, e in self.entries() if e.user is not None))

    def roles(self) -> list[str]:
        """The contact role names the block names (not `primary`), each once."""
        return list(dict.fromkeys(e.contact_role for _, _, e in self.entries()
                                  if e.contact_role is not None and not e.is_primary))

    def reminder_days(self) -> list[int]:
        """The nominal days after the invitation a reminder is due (empty when off), as the docs state the
        pattern; the outbox schedules each from when the previous one really went out."""
        return [] if self.reminders is None else self.reminders.due_days(self.expires_after_days)


#: Where in a rule's `signers` block a message points: a path of keys and 0-based indexes.
At = Callable[..., str]


def signer_problems(sobject: str, watched_field: str, values: list[str], signers: SignersConfig, at: At) -> list[str]:
    """What a rule's `signers` block asks that the rule's object cannot give, each at its line (`at(*path)`
    gives `file:line` for a path inside the block): a contact role on a Quote, a quote contact on an
    Opportunity, a signer listed twice, an expiry value for the wrong object or one that fires the rule."""
    problems: list[str] = []
    allowed = SOURCES_BY_OBJECT.get(sobject)
    seen: dict[SignerEntry, int] = {}
    for s, e, entry in signers.entries():
        if allowed is not None and entry.source not in allowed:
            problems.append(f"{at('steps', s, e)}: {entry.describe()} cannot sign {_a(sobject)}: {_fix_for(sobject)}")
        if entry in seen:
            problems.append(f"{at('steps', s, e)}: {entry.describe()} is listed twice (first in step {seen[entry]}); "
                            "each signer signs once: remove one")
        seen.setdefault(entry, s + 1)
    expiry = signers.on_expiry
    if expiry is not None and sobject in EXPIRY_KEYS:
        key, field = EXPIRY_KEYS[sobject]
        if getattr(expiry, key) is None:
            other = "status" if key == "stage" else "stage"
            problems.append(f"{at('on_expiry', other)}: {_a(sobject)} has no {other}; write `on_expiry: {{{key}: "
                            f"...}}` with a {field} value")
        elif watched_field == field and expiry.value in values:
            problems.append(
                f"{at('on_expiry', key)}: on_expiry moves the {sobject} to {expiry.value!r}, which this rule "
                f"watches: an expired envelope would send the document again; choose a {field} value the rule "
                "does not list (e.g. \"Closed Lost\"), or remove `on_expiry`")
    return problems


def _a(sobject: str) -> str:
    return f"{'an' if sobject[:1] in 'AEIOU' else 'a'} {sobject}"


def _fix_for(sobject: str) -> str:
    if sobject == "Quote":
        return ("a Quote's signers are {quote_contact: true} (Quote.ContactId), {quote_email: true} (Quote.Email) "
                "or {user: ...}; contact roles belong to Opportunities")
    return ("an Opportunity's signers are {contact_role: primary}, {contact_role: <role name>} or {user: ...}; "
            "quote_contact and quote_email belong to Quote rules")


def signer_paths(signers: SignersConfig) -> list[tuple[str | int, ...]]:
    """The paths inside a `signers` block that messages made after loading (against the org) point at."""
    paths: list[tuple[str | int, ...]] = [("on_expiry",), ("on_expiry", "stage"), ("on_expiry", "status")]
    return paths + [("steps", s, e) for s, e, _ in signers.entries()]


def line_key(*path: str | int) -> str:
    """The `Rules.lines` key of a path inside a rule's `signers` block: `signers.steps.1.0`."""
    return ".".join(map(str, ("signers", *path)))
