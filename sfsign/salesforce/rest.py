"""`SalesforceRest`, the daemon's REST client for one org: single-record calls, queries and events.

The client is one object with every call on it, assembled from the groups in their own modules:
the session they all run through (`session`: token, thread pool, errors), the batched calls
(`composite`), the file calls (`files`), the custom notifications (`notifications`), and here the
calls on one record, the paged queries and the org's metadata. Callers and test fakes see one
`SalesforceRest`, as before the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simple_salesforce
from simple_salesforce.util import exception_handler

from sfsign.salesforce import paging
from sfsign.salesforce.composite import CompositeCalls
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.files import FileCalls
from sfsign.salesforce.notifications import NotificationCalls
from sfsign.salesforce.session import created_id, dump_json
from sfsign.salesforce.soql import validate_api_name, validate_field_path, validate_id


@dataclass(frozen=True)
class QueryPage:
    records: list[dict[str, Any]]
    total_size: int
    next_records_url: str | None


class SalesforceRest(FileCalls, CompositeCalls, NotificationCalls):
    """REST calls for the daemon. One instance per org; safe to use from many tasks at once."""

    async def query_page(self, soql: str | None = None, *, next_records_url: str | None = None) -> QueryPage:
        """One batch: start with `soql`, continue with the previous page's `next_records_url`.

        The batch's records come with their child subqueries complete (their later batches read)."""
        if (soql is None) == (next_records_url is None):
            raise ValueError("give exactly one of soql / next_records_url")

        def run(sf: simple_salesforce.Salesforce) -> QueryPage:
            if next_records_url is not None:
                body = sf.query_more(next_records_url, identifier_is_url=True)
            else:
                body = sf.query(soql or "")
            return QueryPage(
                records=paging.complete_batch(sf, body),
                total_size=int(body.get("totalSize") or 0),
                next_records_url=paging.next_url(body),
            )

        return await self._call(run)

    async def get(self, sobject: str, record_id: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        path = f"sobjects/{validate_api_name(sobject)}/{validate_id(record_id)}"
        params = {"fields": ",".join(validate_field_path(f) for f in fields)} if fields else None
        result = await self._call(lambda sf: sf.restful(path, params=params))
        return dict(result or {})

    async def versions(self) -> list[str]:
        """API versions the org serves (`GET /services/data/`, which does not count against limits)."""

        def run(sf: simple_salesforce.Salesforce) -> Any:
            response = sf.session.get(f"https://{sf.sf_instance}/services/data/", headers=sf.headers)
            if response.status_code >= 300:
                exception_handler(response, name="versions")
            return response.json()

        body = await self._call(run)
        return [str(v["version"]) for v in body if isinstance(v, dict) and "version" in v]

    async def describe(self, sobject: str) -> dict[str, Any]:
        path = f"sobjects/{validate_api_name(sobject)}/describe"
        return dict(await self._call(lambda sf: sf.restful(path)) or {})

    async def limits(self) -> dict[str, Any]:
        return dict(await self._call(lambda sf: sf.limits()) or {})

    async def create(self, sobject: str, fields: Mapping[str, Any]) -> str:
        path = f"sobjects/{validate_api_name(sobject)}/"
        body = dump_json(dict(fields))
        result = await self._call(lambda sf: sf.restful(path, method="POST", data=body), write=True)
        return created_id(result)

    async def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        path = f"sobjects/{validate_api_name(sobject)}/{validate_id(record_id)}"
        body = dump_json(dict(fields))
        await self._call(lambda sf: sf.restful(path, method="PATCH", data=body), write=True)

    async def publish_event(self, name: str, fields: Mapping[str, Any]) -> str:
        """Publish a platform event; return its EventUuid (from the OPERATION_ENQUEUED entry).

        Falls back to the returned record id when the org does not report an EventUuid.
        """
        if not validate_api_name(name).endswith("__e"):
            raise ValueError(f"not a platform event: {name!r}")
        body = dump_json(dict(fields))
        result = await self._call(lambda sf: sf.restful(f"sobjects/{name}/", method="POST", data=body),
                                  write=True)
        if not isinstance(result, Mapping):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "publish returned no body", transient=False)
        errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
        for entry in errors:
            if entry.get("statusCode") == "OPERATION_ENQUEUED" and entry.get("message"):
                return str(entry["message"])
        if not result.get("success", False):
            raise SalesforceError.from_record_error(errors[0] if errors else {"statusCode": "UNKNOWN"})
        return str(result.get("id") or "")
