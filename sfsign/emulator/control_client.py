"""A small async client for the emulator's control API (`/_control/...`, see docs/emulator.md).

The demo and the end-to-end tests act on the org the way a sales rep would — change a stage, publish
a "Send for signature" event — through this client, over the same HTTPS the daemon uses.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

TOKEN_HEADER = "X-Control-Token"


class ControlClient:
    def __init__(self, base_url: str, token: str, ca_file: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.AsyncClient(
            base_url=base_url, verify=context, headers={TOKEN_HEADER: token}, timeout=30.0
        )

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"control API {method} {path}: HTTP {response.status_code}: {response.text}")
        return response.json()

    async def query(self, soql: str) -> list[dict[str, Any]]:
        result = await self._json("POST", "/_control/query", {"q": soql})
        return list(result["records"])

    async def get(self, sobject: str, record_id: str, fields: list[str] | None = None) -> dict[str, Any]:
        path = f"/_control/records/{sobject}/{record_id}"
        if fields:
            path += "?fields=" + ",".join(fields)
        return dict(await self._json("GET", path))

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any], *, user: str) -> None:
        await self._json("POST", f"/_control/records/{sobject}/{record_id}", {"user": user, "fields": fields})

    async def create(self, sobject: str, fields: dict[str, Any], *, user: str) -> str:
        result = await self._json("POST", f"/_control/records/{sobject}", {"user": user, "fields": fields})
        return str(result["id"])

    async def bulk_create(self, sobject: str, records: list[dict[str, Any]], *, user: str) -> list[str]:
        """Insert `records` in one transaction; their ids, in order."""
        result = await self._json("POST", f"/_control/bulk/{sobject}", {"user": user, "records": records})
        return [str(i) for i in result["ids"]]

    async def bulk_update(self, sobject: str, record_ids: list[str], fields: dict[str, Any], *, user: str) -> None:
        """Set the same `fields` on every record in one transaction (a mass edit or data loader batch)."""
        records = [{"Id": rid, **fields} for rid in record_ids]
        await self._json("PATCH", f"/_control/bulk/{sobject}", {"user": user, "records": records})

    async def add_record_type(self, sobject: str, developer_name: str, label: str | None = None, *,
                              active: bool = True) -> str:
        """A record type, as an admin creates it in Setup; its id."""
        body = {"sobject": sobject, "developerName": developer_name, "name": label, "active": active}
        return str((await self._json("POST", "/_control/record-types", body))["id"])

    async def publish(self, event: str, fields: dict[str, Any], *, user: str) -> dict[str, Any]:
        return dict(await self._json("POST", f"/_control/events/{event}", {"user": user, "fields": fields}))

    async def files(self) -> list[dict[str, Any]]:
        result = await self._json("GET", "/_control/files")
        return list(result["files"] if isinstance(result, dict) else result)

    async def notifications(self) -> list[dict[str, Any]]:
        """The custom notifications the org accepted, oldest first."""
        return list((await self._json("GET", "/_control/notifications"))["notifications"])

    async def api_usage(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/_control/api-usage"))

    async def streaming_clients(self) -> list[dict[str, Any]]:
        """The Bayeux clients the org knows, with their subscriptions (how a benchmark sees a daemon ready)."""
        result = await self._json("GET", "/_control/streaming/clients")
        return list(result["clients"])

    async def pubsub_streams(self) -> list[dict[str, Any]]:
        """The Pub/Sub API's open Subscribe streams (topic, pendingNumRequested, queued, delivered)."""
        return list((await self._json("GET", "/_control/pubsub/streams"))["streams"])

    async def drop_pubsub_streams(self) -> int:
        """End every Subscribe stream with UNAVAILABLE, as a Salesforce outage does; how many were open."""
        return int((await self._json("POST", "/_control/pubsub/drop-streams", {}))["dropped"])

    async def hold_pubsub_streams(self, enabled: bool = True) -> None:
        """Half-open Subscribe streams: no events and no keepalives until released."""
        await self._json("POST", "/_control/pubsub/hold-streams", {"enabled": enabled})

    async def revoke_tokens(self, token: str | None = None) -> int:
        """Revoke one access token or all of them (CometD and Pub/Sub clients must log in again)."""
        body = {"token": token} if token else {}
        return int((await self._json("POST", "/_control/auth/revoke", body))["revoked"])

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self._json("POST", path, body or {})

    async def faults(self) -> dict[str, Any]:
        """The armed faults, each with how many requests it has hit so far."""
        return dict(await self._json("GET", "/_control/faults"))

    async def add_error_fault(self, **fault: Any) -> str:
        """Arm an error fault (the control API's fields: prefix, method, status, errorCode, message, count,
        rate, mode, bodyContains); its id, for `remove_fault`."""
        return str((await self._json("POST", "/_control/faults/errors", fault))["id"])

    async def remove_fault(self, fault_id: str) -> None:
        """Lift one armed fault, leaving the others (the outage is over)."""
        await self._json("DELETE", f"/_control/faults/{fault_id}")
