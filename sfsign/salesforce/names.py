"""sfsign's Salesforce vocabulary: every API name, picklist value and length limit the package defines.

The SFDX package in `salesforce-metadata/` is what an admin deploys; this module is what the daemon's
code says about it, in one place, so a rename is one edit and a query reads as the fields it selects
(`f"SELECT Id, {Record.STATUS} FROM ..."`). `tests/unit/metadata/test_names_vocabulary.py` parses the
package and fails when the two disagree on a name, a type, a length or a picklist value, so a drift
shows in a unit test rather than as `INVALID_FIELD` in a customer's org.

The emulator does not import this module: it builds its org from the package (`sfsign.metadata`), so a
name the daemon gets wrong fails against the emulator as it would against Salesforce.

Names are plain strings (SOQL, JSON bodies and dict keys take them as they are); the classes are only
namespaces, one per object, with `NAME` for a custom object's own API name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --------------------------------------------------------------------------------------- length limits
# The package's lengths, which the test checks against it; values sfsign writes are cut to these.
TRANSACTION_ID_LENGTH: Final = 64  # Text: a transaction id is a 36-character UUID
DOCUMENT_HASH_LENGTH: Final = 64  # Text: SHA-256 in hex
LEVEL_LENGTH: Final = 32  # Text: PAdES level such as B-LTA
SIGNER_LENGTH: Final = 255
SIGNER_SERIAL_LENGTH: Final = 64
VALIDATION_LENGTH: Final = 255
ID_LENGTH: Final = 18  # Text fields holding a Salesforce id
LONG_TEXT_LENGTH: Final = 32_768  # LongTextArea: Sign_Error__c, Signature_Event__c.Detail__c
ACTION_LENGTH: Final = 20
RULE_LENGTH: Final = 80
REASON_LENGTH: Final = 255
ACTOR_LENGTH: Final = 255
PROGRESS_LENGTH: Final = 40  # Text: "1 of 2 signed"
DECLINE_REASON_LENGTH: Final = 255  # Text: the first 255 characters; the whole reason goes to the audit row
# What sfsign writes into a LongTextArea (error text, audit detail): cut below what the field holds, as
# it has been since the first version; the test only pins that it fits.
LONG_TEXT_WRITE_MAX: Final = 32_000


# ------------------------------------------------------------------------------------------- objects
class Record:
    """Fields the package adds to Opportunity and Quote: the signature sfsign writes back."""

    TRANSACTION_ID: Final = "Sign_Transaction_Id__c"  # external id, unique: one job's mark on the record
    STATUS: Final = "Sign_Status__c"  # restricted picklist: SIGN_STATUS_VALUES
    DOCUMENT_ID: Final = "Signed_Document_Id__c"  # the signed file's ContentDocument (069)
    DOCUMENT_URL: Final = "Signed_Document_Url__c"
    SIGNED_AT: Final = "Signed_At__c"
    ERROR: Final = "Sign_Error__c"
    DOCUMENT_HASH: Final = "Sign_Document_Hash__c"
    LEVEL: Final = "Sign_Level__c"
    TIMESTAMP: Final = "Sign_Timestamp__c"
    SIGNER: Final = "Sign_Signer__c"
    SIGNER_SERIAL: Final = "Sign_Signer_Serial__c"
    VALIDATION: Final = "Sign_Validation__c"
    EIDAS_LEVEL: Final = "Sign_Eidas_Level__c"  # restricted picklist: EIDAS_LEVEL_VALUES
    ARCHIVE_DUE: Final = "Sign_Archive_Due__c"
    # Customer signing: what the rep follows an envelope by (nothing writes them yet).
    PROGRESS: Final = "Sign_Progress__c"  # "1 of 2 signed"
    SENT_AT: Final = "Sign_Sent_At__c"
    EXPIRES_AT: Final = "Sign_Expires_At__c"
    COMPLETED_AT: Final = "Sign_Completed_At__c"
    DECLINE_REASON: Final = "Sign_Decline_Reason__c"


class File:
    """The field the package adds to ContentVersion: finds an upload again after an uncertain outcome."""

    TRANSACTION_ID: Final = "Sign_Transaction_Id__c"


class SignRequest:
    """`Sign_Request__e`, the platform event the "Send for Signature" flow publishes."""

    NAME: Final = "Sign_Request__e"
    RECORD_ID: Final = "RecordId__c"
    RULE: Final = "Rule__c"
    REQUESTED_BY_ID: Final = "RequestedById__c"
    REASON: Final = "Reason__c"
    ACTION: Final = "Action__c"  # Text: SIGN_REQUEST_ACTIONS, empty means ACTION_SIGN


class SignatureEvent:
    """`Signature_Event__c`, the audit trail on the record (one row per job state change)."""

    NAME: Final = "Signature_Event__c"
    OPPORTUNITY: Final = "Opportunity__c"
    QUOTE: Final = "Quote__c"
    TRANSACTION_ID: Final = "Transaction_Id__c"
    EVENT_TYPE: Final = "Event_Type__c"  # restricted picklist: job states, AUDIT_ONLY_ and ENVELOPE_EVENT_TYPES
    OCCURRED_AT: Final = "Occurred_At__c"
    ACTOR: Final = "Actor__c"
    DETAIL: Final = "Detail__c"


# The standard objects that carry `Record`'s fields.
SIGNED_OBJECTS: Final = ("Opportunity", "Quote")

# Fields sfsign itself writes: a rule watching one of them could re-trigger on sfsign's own write-back.
OWNED_FIELDS: Final = frozenset(
    {
        Record.TRANSACTION_ID, Record.STATUS, Record.DOCUMENT_ID, Record.DOCUMENT_URL, Record.SIGNED_AT,
        Record.ERROR, Record.DOCUMENT_HASH, Record.LEVEL, Record.TIMESTAMP, Record.SIGNER,
        Record.SIGNER_SERIAL, Record.VALIDATION, Record.EIDAS_LEVEL, Record.ARCHIVE_DUE,
        Record.PROGRESS, Record.SENT_AT, Record.EXPIRES_AT, Record.COMPLETED_AT, Record.DECLINE_REASON,
    }
)

# ---------------------------------------------------------------------------------- picklist values
# `Sign_Status__c`. sfsign writes the first three; the others are the customer-signing lifecycle's.
STATUS_PENDING: Final = "Pending"
STATUS_SIGNED: Final = "Signed"
STATUS_ERROR: Final = "Error"
STATUS_SENT: Final = "Sent"
STATUS_VIEWED: Final = "Viewed"
STATUS_COMPLETED: Final = "Completed"
STATUS_REFUSED: Final = "Refused"
STATUS_EXPIRED: Final = "Expired"
STATUS_VOIDED: Final = "Voided"
SIGN_STATUS_VALUES: Final = (STATUS_PENDING, STATUS_SIGNED, STATUS_ERROR, STATUS_SENT, STATUS_VIEWED,
                             STATUS_COMPLETED, STATUS_REFUSED, STATUS_EXPIRED, STATUS_VOIDED)

# `Sign_Eidas_Level__c`.
EIDAS_LEVEL_VALUES: Final = ("SES", "AES", "QES")

# `Sign_Request__e.Action__c` (a Text field; the flow offers these choices): `Sign` (also when empty)
# signs a record not signed yet; `Reissue` signs a new version and supersedes the old document; `Void`
# withdraws the record's envelope out for the customer's signature (`Reason__c` required); `Resend` sends
# its invitations again to every signer who has not answered.
ACTION_SIGN: Final = "Sign"
ACTION_REISSUE: Final = "Reissue"
ACTION_VOID: Final = "Void"
ACTION_RESEND: Final = "Resend"
SIGN_REQUEST_ACTIONS: Final = (ACTION_SIGN, ACTION_REISSUE, ACTION_VOID, ACTION_RESEND)
ENVELOPE_ACTIONS: Final = (ACTION_VOID, ACTION_RESEND)

# `Signature_Event__c.Event_Type__c`: every job state as it is (`sfsign.outbox.JobState`), and these,
# which record what happened to a job rather than a state it reached.
AUDIT_REFUSED: Final = "refused"  # a Sign_Request__e was refused (unknown rule or action)
AUDIT_RETRIED: Final = "retried"  # `sfsign retry` re-queued the job
AUDIT_ALREADY_SIGNED: Final = "already_signed"  # the record was signed before; nothing was signed again
AUDIT_SUPERSEDED: Final = "superseded"  # a Re-issue replaced this job's document
AUDIT_ONLY_EVENT_TYPES: Final = (AUDIT_REFUSED, AUDIT_RETRIED, AUDIT_ALREADY_SIGNED, AUDIT_SUPERSEDED)
# ... and an envelope's events (customer signing), in the package's order. `signed` is also a job state
# (the seller's seal): a customer's signature is written as the same value, its actor the signer.
EVENT_SENT: Final = "sent"
EVENT_VIEWED: Final = "viewed"
EVENT_CODE_FAILED: Final = "code_failed"
EVENT_SIGNED: Final = "signed"
EVENT_DECLINED: Final = "declined"
EVENT_REMINDED: Final = "reminded"
EVENT_EXPIRED: Final = "expired"
EVENT_VOIDED: Final = "voided"
EVENT_COMPLETED: Final = "completed"
ENVELOPE_EVENT_TYPES: Final = (EVENT_SENT, EVENT_VIEWED, EVENT_CODE_FAILED, EVENT_SIGNED, EVENT_DECLINED,
                               EVENT_REMINDED, EVENT_EXPIRED, EVENT_VOIDED, EVENT_COMPLETED)


# ------------------------------------------------------------------------------ custom notifications
class NotificationType:
    """`CustomNotificationType`, the package's notification type and the standard object an org lists
    it in (queried by DeveloperName for its 0ML id, which differs in every org)."""

    NAME: Final = "CustomNotificationType"
    DEVELOPER_NAME: Final = "DeveloperName"
    LABEL: Final = "CustomNotifTypeName"
    DESKTOP: Final = "Desktop"
    MOBILE: Final = "Mobile"
    #: The package's type (notificationtypes/sfsign_Signature_Outcome.notiftype-meta.xml): the record
    #: owner hears of a refusal, an expiry and a completion.
    SIGNATURE_OUTCOME: Final = "sfsign_Signature_Outcome"


#: The standard invocable action that sends one (`POST /services/data/vXX.X/actions/standard/...`).
CUSTOM_NOTIFICATION_ACTION: Final = "customNotificationAction"
#: Its documented input limits (Actions Developer Guide, "Custom Notification Actions").
NOTIFICATION_TITLE_MAX: Final = 250
NOTIFICATION_BODY_MAX: Final = 750
NOTIFICATION_RECIPIENTS_MAX: Final = 500
#: The user permission the integration user needs to call the action over REST (orgs from Winter '21 on).
SEND_CUSTOM_NOTIFICATIONS_PERMISSION: Final = "SendCustomNotifications"


# ------------------------------------------------------------------------------------ the whole list
@dataclass(frozen=True)
class FieldSpec:
    """One custom field as the daemon relies on it: where it is, its Metadata API type, its length or
    its picklist values (in the package's order)."""

    objects: tuple[str, ...]
    name: str
    type: str
    length: int | None = None
    values: tuple[str, ...] = ()
    reference_to: str | None = None


_RECORD: Final = SIGNED_OBJECTS
_REQUEST: Final = (SignRequest.NAME,)
_EVENT: Final = (SignatureEvent.NAME,)

FIELDS: Final[tuple[FieldSpec, ...]] = (
    FieldSpec((*_RECORD, "ContentVersion"), Record.TRANSACTION_ID, "Text", TRANSACTION_ID_LENGTH),
    FieldSpec(_RECORD, Record.STATUS, "Picklist", values=SIGN_STATUS_VALUES),
    FieldSpec(_RECORD, Record.DOCUMENT_ID, "Text", ID_LENGTH),
    FieldSpec(_RECORD, Record.DOCUMENT_URL, "Url"),
    FieldSpec(_RECORD, Record.SIGNED_AT, "DateTime"),
    FieldSpec(_RECORD, Record.ERROR, "LongTextArea", LONG_TEXT_LENGTH),
    FieldSpec(_RECORD, Record.DOCUMENT_HASH, "Text", DOCUMENT_HASH_LENGTH),
    FieldSpec(_RECORD, Record.LEVEL, "Text", LEVEL_LENGTH),
    FieldSpec(_RECORD, Record.TIMESTAMP, "DateTime"),
    FieldSpec(_RECORD, Record.SIGNER, "Text", SIGNER_LENGTH),
    FieldSpec(_RECORD, Record.SIGNER_SERIAL, "Text", SIGNER_SERIAL_LENGTH),
    FieldSpec(_RECORD, Record.VALIDATION, "Text", VALIDATION_LENGTH),
    FieldSpec(_RECORD, Record.EIDAS_LEVEL, "Picklist", values=EIDAS_LEVEL_VALUES),
    FieldSpec(_RECORD, Record.ARCHIVE_DUE, "DateTime"),
    FieldSpec(_RECORD, Record.PROGRESS, "Text", PROGRESS_LENGTH),
    FieldSpec(_RECORD, Record.SENT_AT, "DateTime"),
    FieldSpec(_RECORD, Record.EXPIRES_AT, "DateTime"),
    FieldSpec(_RECORD, Record.COMPLETED_AT, "DateTime"),
    FieldSpec(_RECORD, Record.DECLINE_REASON, "Text", DECLINE_REASON_LENGTH),
    FieldSpec(_REQUEST, SignRequest.RECORD_ID, "Text", ID_LENGTH),
    FieldSpec(_REQUEST, SignRequest.RULE, "Text", RULE_LENGTH),
    FieldSpec(_REQUEST, SignRequest.REQUESTED_BY_ID, "Text", ID_LENGTH),
    FieldSpec(_REQUEST, SignRequest.REASON, "Text", REASON_LENGTH),
    FieldSpec(_REQUEST, SignRequest.ACTION, "Text", ACTION_LENGTH),
    FieldSpec(_EVENT, SignatureEvent.OPPORTUNITY, "Lookup", reference_to="Opportunity"),
    FieldSpec(_EVENT, SignatureEvent.QUOTE, "Lookup", reference_to="Quote"),
    FieldSpec(_EVENT, SignatureEvent.TRANSACTION_ID, "Text", TRANSACTION_ID_LENGTH),
    FieldSpec(_EVENT, SignatureEvent.EVENT_TYPE, "Picklist"),  # values: job states, AUDIT_ONLY_, ENVELOPE_
    FieldSpec(_EVENT, SignatureEvent.OCCURRED_AT, "DateTime"),
    FieldSpec(_EVENT, SignatureEvent.ACTOR, "Text", ACTOR_LENGTH),
    FieldSpec(_EVENT, SignatureEvent.DETAIL, "LongTextArea", LONG_TEXT_LENGTH),
)

# The custom objects the package defines (a platform event and the audit trail object).
CUSTOM_OBJECTS: Final = (SignRequest.NAME, SignatureEvent.NAME)
# The custom notification types the package defines (by DeveloperName, the file's name).
NOTIFICATION_TYPES: Final = (NotificationType.SIGNATURE_OUTCOME,)
