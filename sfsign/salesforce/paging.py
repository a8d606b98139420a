"""Complete query results: every batch of the query and every batch of every child subquery.

Salesforce pages at two levels. The query itself comes in batches (`done: false` + `nextRecordsUrl`),
and so does each parent-to-child subquery of a record once its children exceed what one batch
holds (a few hundred): the nested result then carries its own `done: false` and `nextRecordsUrl`.
A client that reads only the first child batch renders a quote with lines missing and nothing says
so. Here every child batch is read before the parent's next batch is asked for, because that request
releases the child cursors of the batch before it (SOAP API, queryMore()). A result that says it is
not done but names no next batch, or whose children do not add up to `totalSize`, is an error (a
transient one: the job retries), never a shorter list.

The functions are synchronous (simple-salesforce); `SalesforceRest` runs them in its thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import simple_salesforce

from sfsign.salesforce.errors import SalesforceError

INCOMPLETE = "INCOMPLETE_QUERY_RESULT"


def next_url(result: Mapping[str, Any]) -> str | None:
    """The next batch of a (child) query result, None when it is done."""
    if result.get("done", True) is not False:
        return None
    url = result.get("nextRecordsUrl")
    if not isinstance(url, str) or not url:
        raise SalesforceError(200, INCOMPLETE, "a query result is not done but names no nextRecordsUrl",
                              transient=True)
    return url


def complete_children(sf: simple_salesforce.Salesforce, record: dict[str, Any]) -> None:
    """Replace each paged child subquery result of `record` by the complete one (in place)."""
    for name, value in list(record.items()):
        if not isinstance(value, Mapping) or not isinstance(value.get("records"), list):
            continue
        url = next_url(value)
        if url is None:
            continue
        children = list(value["records"])
        while url is not None:
            batch = sf.query_more(url, identifier_is_url=True)
            children.extend(batch.get("records") or [])
            url = next_url(batch)
        expected = value.get("totalSize")
        if isinstance(expected, int) and expected != len(children):
            raise SalesforceError(200, INCOMPLETE, f"{name}: {len(children)} child records read, but the query "
                                  f"reported {expected}", transient=True)
        record[name] = {"totalSize": len(children), "done": True, "records": children}


def complete_batch(sf: simple_salesforce.Salesforce, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of one batch with their children complete."""
    records = [dict(r) for r in result.get("records") or [] if isinstance(r, Mapping)]
    for record in records:
        complete_children(sf, record)
    return records


def drain(sf: simple_salesforce.Salesforce, first: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every record of a query from its first batch on, each batch's children read before the next batch."""
    records: list[dict[str, Any]] = []
    result = first
    while True:
        records.extend(complete_batch(sf, result))
        url = next_url(result)
        if url is None:
            return records
        result = sf.query_more(url, identifier_is_url=True)


def is_complete(result: Mapping[str, Any]) -> bool:
    """True when `result` needs no further request: done, and no child result of its records paged."""
    if result.get("done", True) is False:
        return False
    records = [r for r in result.get("records") or [] if isinstance(r, Mapping)]
    return not any(isinstance(v, Mapping) and v.get("done", True) is False for r in records for v in r.values())
