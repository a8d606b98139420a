"""What a rule with signers shows when its trigger's File is already in Salesforce and the outbox lost the job
(a restored backup, purged rows, a fresh data directory): the fetch step adopts the File and signs and sends
nothing again (`Steps._adopt_existing_file`); this says which status the record gets.

A job with signers uploads nothing before the envelope completes: its only Files are the completed document
(`<tx>`) and, right after it, the certificate of completion (`<tx>-certificate`). So:

- both are there: the envelope completed; the record shows `Completed`;
- the document without its certificate: either the daemon stopped between the two uploads, or the document
  was sealed while the rule had no signers yet (the same trigger, replayed after `signers:` was added). The
  document itself tells which: every customer field signed is the completed document, shown `Completed`
  with a note that its certificate of completion is missing (its evidence was in the lost outbox); otherwise
  it is a sealed document, shown `Signed` as a seal-only rule shows it, with a note that it was not sent for
  signature and how to send it (a Re-issue). Never a second envelope: the trigger was handled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sfsign.documents.jobs import signature_fields_job
from sfsign.documents.specs import CUSTOMER_FIELD
from sfsign.gateway import SalesforceGateway
from sfsign.salesforce.files import ContentVersionRef
from sfsign.salesforce.names import STATUS_COMPLETED, STATUS_SIGNED

CERTIFICATE_SUFFIX = "-certificate"  # the certificate's File carries `<tx>-certificate`, found apart from the PDF

NO_CERTIFICATE = ("Completed: every customer signature is in the document, but its certificate of completion is "
                  "not on the record (sfsign's local outbox, which held its evidence, lost this job before it was "
                  "uploaded); the document was not signed or sent again.")
SEALED_ONLY = ("Signed (sealed) without the customer's signature: this trigger's document was sealed before the "
               "rule had signers, and it was not sent for signature now. To send it for signature, use Send for "
               "Signature with the action Re-issue.")

InPool = Callable[[Callable[[bytes], dict[str, bool]], bytes], Awaitable[dict[str, bool]]]


@dataclass(frozen=True)
class Adopted:
    """The status the record shows for the adopted File, and a note for the rep (None: nothing to say)."""

    status: str
    note: str | None = None


def completed(fields: dict[str, bool]) -> bool:
    """Whether a document's signature fields show a completed envelope: customer fields, every one signed."""
    customer = [signed for name, signed in fields.items() if name.startswith(CUSTOMER_FIELD)]
    return bool(customer) and all(customer)


async def envelope_file(gateway: SalesforceGateway, in_pool: InPool, transaction_id: str,
                        file: ContentVersionRef) -> Adopted:
    """How a rule with signers shows its trigger's File (module docstring): the certificate's File is looked up
    by its transaction id; without it, the document is read (in the process pool) for its customer fields."""
    if await gateway.find_file(transaction_id + CERTIFICATE_SUFFIX) is not None:
        return Adopted(STATUS_COMPLETED)
    pdf = await gateway.download(file.id)
    if completed(await in_pool(signature_fields_job, pdf)):
        return Adopted(STATUS_COMPLETED, NO_CERTIFICATE)
    return Adopted(STATUS_SIGNED, SEALED_ONLY)
