"""`/_control/`: what a test, a benchmark or `sfsign demo` does to the org from outside the API.

A sales rep moving a stage, an admin publishing an event, an ops person reading API usage, and the
fault switches (errors, latency, forgotten Bayeux clients, revoked tokens, dropped, half-open or torn
long polls, dropped Pub/Sub streams, shrunk retention, gap and overflow events). The server binds
127.0.0.1 only and every call needs the `X-Control-Token` generated at start, so nothing here is
reachable from elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sfsign.emulator.access import Access
from sfsign.emulator.bus import GAP_TYPES
from sfsign.emulator.cometd import BayeuxServer
from sfsign.emulator.errors import ApiError
from sfsign.emulator.org import Org
from sfsign.emulator.pubsub_server import PubSubServer
from sfsign.emulator.soql import QueryResult

TOKEN_HEADER = "X-Control-Token"
LOOPBACK = {"127.0.0.1", "::1"}
MAX_DML_ROWS = 10_000  # rows one Apex transaction may write

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, "body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise ControlError(400, "body must be a JSON object")
    return data


class Control:
    """Handlers of the control API; `default_user` acts when a call names no user."""

    def __init__(self, org: Org, bayeux: BayeuxServer, token: str, *, default_user: str | None = None,
                 pubsub: PubSubServer | None = None) -> None:
        self.org = org
        self.bayeux = bayeux
        self.pubsub = pubsub
        self._token = token
        self.default_user = default_user

    def routes(self) -> list[web.RouteDef]:
        g = self._guard
        return [
            web.get("/_control/records/{sobject}/{id}", g(self.get_record)),
            web.post("/_control/records/{sobject}/{id}", g(self.update_record)),
            web.delete("/_control/records/{sobject}/{id}", g(self.delete_record)),
            web.post("/_control/records/{sobject}", g(self.create_record)),
            web.post("/_control/bulk/{sobject}", g(self.bulk_insert)),
            web.patch("/_control/bulk/{sobject}", g(self.bulk_update)),
            web.post("/_control/query", g(self.query)),
            web.post("/_control/users/access", g(self.set_access)),
            web.post("/_control/record-types", g(self.add_record_type)),
            web.post("/_control/events/{name}", g(self.publish_event)),
            web.get("/_control/api-usage", g(self.api_usage)),
            web.post("/_control/api-usage", g(self.set_api_usage)),
            web.get("/_control/files", g(self.files)),
            web.get("/_control/notifications", g(self.notifications)),
            web.delete("/_control/notifications", g(self.clear_notifications)),
            web.get("/_control/settings", g(self.settings)),
            web.post("/_control/settings", g(self.set_settings)),
            web.get("/_control/faults", g(self.faults)),
            web.delete("/_control/faults", g(self.clear_faults)),
            web.post("/_control/faults/errors", g(self.add_error_fault)),
            web.post("/_control/faults/latency", g(self.add_latency_fault)),
            # before /_control/faults/{id}: routes match in registration order
            web.get("/_control/faults/row-locks", g(self.row_locks)),
            web.post("/_control/faults/row-locks", g(self.lock_rows)),
            web.delete("/_control/faults/row-locks", g(self.unlock_rows)),
            web.delete("/_control/faults/{id}", g(self.remove_fault)),
            web.post("/_control/auth/revoke", g(self.revoke_tokens)),
            web.get("/_control/streaming/clients", g(self.streaming_clients)),
            web.get("/_control/streaming/subscriptions", g(self.subscriptions)),
            web.get("/_control/streaming/events", g(self.streaming_events)),
            web.post("/_control/streaming/forget-clients", g(self.forget_clients)),
            web.post("/_control/streaming/revoke-tokens", g(self.revoke_tokens)),
            web.post("/_control/streaming/drop-connections", g(self.drop_connections)),
            web.post("/_control/streaming/hold-connects", g(self.hold_connects)),
            web.post("/_control/streaming/torn-connects", g(self.torn_connects)),
            web.post("/_control/streaming/retention", g(self.retention)),
            web.post("/_control/streaming/purge", g(self.purge)),
            web.post("/_control/streaming/gap", g(self.gap)),
            web.post("/_control/streaming/overflow", g(self.overflow)),
            web.post("/_control/streaming/raw", g(self.raw_event)),
            web.post("/_control/streaming/cdc-entities", g(self.cdc_entities)),
            web.get("/_control/pubsub/streams", g(self.pubsub_streams)),
            web.get("/_control/pubsub/subscriptions", g(self.pubsub_subscriptions)),
            web.post("/_control/pubsub/drop-streams", g(self.drop_pubsub_streams)),
            web.post("/_control/pubsub/hold-streams", g(self.hold_pubsub_streams)),
        ]

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if request.remote not in LOOPBACK:
                return _error(403, "the control API answers loopback clients only")
            given = request.headers.get(TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return _error(403, f"missing or wrong {TOKEN_HEADER} header")
            try:
                return await handler(request)
            except ApiError as exc:
                return web.json_response(exc.body(), status=exc.status)
            except ControlError as exc:
                return _error(exc.status, exc.message)

        return guarded

    def _user(self, body: dict[str, Any]) -> dict[str, Any]:
        username = body.get("user") or self.default_user
        if not username:
            raise ControlError(400, "name the acting user: {\"user\": \"<username>\"}")
        user = self.org.store.user_by_username(str(username))
        if user is None:
            raise ControlError(404, f"no user with username {username!r}")
        return user

    @staticmethod
    def _fields(body: dict[str, Any]) -> dict[str, Any]:
        fields = body.get("fields", {})
        if not isinstance(fields, dict):
            raise ControlError(400, "fields must be an object")
        return fields

    # -- records and events

    async def get_record(self, request: web.Request) -> web.Response:
        fields = request.query.get("fields")
        record = self.org.store.get(
            request.match_info["sobject"],
            request.match_info["id"],
            fields.split(",") if fields else None,
        )
        return web.json_response(record)

    async def update_record(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        self.org.store.update(
            request.match_info["sobject"], request.match_info["id"], self._fields(body), user_id=user["Id"]
        )
        return web.json_response({"id": request.match_info["id"], "success": True})

    async def delete_record(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        self.org.store.delete(request.match_info["sobject"], request.match_info["id"], user_id=user["Id"])
        return web.json_response({"id": request.match_info["id"], "success": True})

    async def create_record(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        record_id = self.org.store.insert(request.match_info["sobject"], self._fields(body), user_id=user["Id"])
        return web.json_response({"id": record_id, "success": True}, status=201)

    @staticmethod
    def _bulk_records(body: dict[str, Any], *, with_id: bool) -> list[dict[str, Any]]:
        records = body.get("records")
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise ControlError(400, "records (a non-empty list of objects) is required")
        if len(records) > MAX_DML_ROWS:
            raise ControlError(400, f"at most {MAX_DML_ROWS} records per transaction (Salesforce's DML row limit)")
        if with_id and not all(isinstance(r.get("Id"), str) and r["Id"] for r in records):
            raise ControlError(400, "every record needs its Id")
        return records

    async def bulk_insert(self, request: web.Request) -> web.Response:
        """Many records in one all-or-nothing transaction (a data load): benchmarks create 10,000
        opportunities with their line items in a few hundred calls instead of 50,000."""
        body = await _json(request)
        user = self._user(body)
        records = self._bulk_records(body, with_id=False)
        with self.org.store.transaction(user_id=user["Id"]) as txn:
            ids = [txn.insert(request.match_info["sobject"], dict(r)) for r in records]
        return web.json_response({"ids": ids, "success": True}, status=201)

    async def bulk_update(self, request: web.Request) -> web.Response:
        """Many records changed in one all-or-nothing transaction, as a list view mass edit, a data
        loader batch or a trigger's bulk DML does: every change shares one transactionKey and commit
        timestamp, which is what a burst of stage changes looks like on the CDC channel."""
        body = await _json(request)
        user = self._user(body)
        records = self._bulk_records(body, with_id=True)
        sobject = request.match_info["sobject"]
        with self.org.store.transaction(user_id=user["Id"]) as txn:
            for record in records:
                txn.update(sobject, record["Id"], {k: v for k, v in record.items() if k != "Id"})
        return web.json_response({"ids": [r["Id"] for r in records], "success": True})

    async def query(self, request: web.Request) -> web.Response:
        body = await _json(request)
        soql = body.get("q")
        if not isinstance(soql, str):
            raise ControlError(400, "q (a SOQL string) is required")
        result = self.org.store.query(soql, include_deleted=bool(body.get("all", False)))
        return web.json_response(result.as_json())

    async def set_access(self, request: web.Request) -> web.Response:
        """Put a user on the minimum-access API-only profile with these permission sets (by API name, as
        deployed from the package), less `revokeFields` and with `readOnlyFields` not editable (both
        `Object.Field`); `"admin": true` lifts the restriction."""
        body = await _json(request)
        user = self._user(body)
        if body.get("admin"):
            self.org.store.access.pop(user["Id"], None)
            return web.json_response({"user": user["Username"], "profile": "System Administrator"})
        names = body.get("permissionSets", [])
        revoke = body.get("revokeFields", [])
        read_only = body.get("readOnlyFields", [])
        if not all(isinstance(v, list) for v in (names, revoke, read_only)):
            raise ControlError(400, "permissionSets, revokeFields and readOnlyFields must be lists")
        unknown = [n for n in names if n not in self.org.permission_sets]
        if unknown:
            raise ControlError(404, f"no permission set named {', '.join(map(str, unknown))} in the package")
        access = Access.granted_by([self.org.permission_sets[n] for n in names], revoke_fields=map(str, revoke),
                                    read_only_fields=map(str, read_only))
        self.org.store.access[user["Id"]] = access
        return web.json_response({"user": user["Username"], "profile": access.profile,
                                  "permissionSets": list(access.permission_sets)})

    async def add_record_type(self, request: web.Request) -> web.Response:
        """An admin adding a record type in Setup: `{"sobject", "developerName", "name"?, "active"?}`."""
        body = await _json(request)
        sobject, developer = body.get("sobject"), body.get("developerName")
        if not isinstance(sobject, str) or not isinstance(developer, str) or not developer:
            raise ControlError(400, "sobject and developerName (strings) are required")
        label = body.get("name")
        record_id = self.org.store.add_record_type(sobject, developer, label if isinstance(label, str) else None,
                                                   active=bool(body.get("active", True)))
        return web.json_response({"id": record_id, "success": True}, status=201)

    async def publish_event(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        before = self.org.bus.last_replay_id
        event_id = self.org.store.insert(request.match_info["name"], self._fields(body), user_id=user["Id"])
        published = [e for e in self.org.bus.retained(f"/event/{request.match_info['name']}")
                     if e.replay_id > before]
        uuid = published[-1].data["event"].get("EventUuid") if published else None
        return web.json_response({"id": event_id, "success": True, "eventUuid": uuid}, status=201)

    # -- API usage and files

    async def api_usage(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "used": self.org.api_calls,
                "max": self.org.daily_api_max,
                "perApp": dict(self.org.api_calls_per_app),
                "limitInfo": self.org.limit_info_header(),
            }
        )

    async def set_api_usage(self, request: web.Request) -> web.Response:
        body = await _json(request)
        maximum = body.get("max")
        self.org.reset_api_usage(int(body.get("used", 0)), int(maximum) if maximum is not None else None)
        return await self.api_usage(request)

    async def files(self, request: web.Request) -> web.Response:
        store = self.org.store
        versions = _records(
            store.query(
                "SELECT Id, ContentDocumentId, Title, PathOnClient, VersionNumber, IsLatest, ContentSize, "
                "Checksum, FileExtension, FileType, FirstPublishLocationId, ReasonForChange, "
                "Sign_Transaction_Id__c, CreatedDate FROM ContentVersion"
            )
        )
        out = []
        for version in versions:
            version.pop("attributes", None)
            links = _records(
                store.query(
                    "SELECT Id, LinkedEntityId, ShareType, Visibility FROM ContentDocumentLink "
                    f"WHERE ContentDocumentId = '{version['ContentDocumentId']}'"
                )
            )
            for link in links:
                link.pop("attributes", None)
            data = store.version_data(version["Id"])
            out.append({**version, "links": links, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
        return web.json_response({"files": out})

    # -- org settings

    async def notifications(self, request: web.Request) -> web.Response:
        """The custom notifications the org accepted, oldest first (what a test asserts a rep was told)."""
        return web.json_response({"notifications": list(self.org.notifications)})

    async def clear_notifications(self, request: web.Request) -> web.Response:
        count = len(self.org.notifications)
        self.org.notifications.clear()
        return web.json_response({"cleared": count})

    async def settings(self, request: web.Request) -> web.Response:
        return web.json_response({"childBatchSize": self.org.query_child_batch_size})

    async def set_settings(self, request: web.Request) -> web.Response:
        """`childBatchSize`: children of one relationship per query batch (Salesforce pages the rest)."""
        body = await _json(request)
        unknown = set(body) - {"childBatchSize"}
        if unknown:
            raise ControlError(400, f"unknown settings: {', '.join(sorted(unknown))}")
        if "childBatchSize" in body:
            try:
                self.org.set_query_child_batch_size(body["childBatchSize"])
            except ValueError as exc:
                raise ControlError(400, str(exc)) from exc
        return await self.settings(request)

    # -- faults

    async def faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.org.faults.describe())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.org.faults.clear()
        self.org.store.unlock_all()
        self.bayeux.wake_all("fault")
        if self.pubsub is not None:
            self.pubsub.set_hold(False)
        return web.json_response(self.org.faults.describe())

    async def add_error_fault(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            fault = self.org.faults.add_error(
                str(body.get("prefix", "/")),
                status=int(body.get("status", 503)),
                error_code=str(body.get("errorCode", "SERVER_UNAVAILABLE")),
                message=str(body.get("message", "Server Unavailable")),
                method=body.get("method"),
                count=int(body["count"]) if body.get("count") is not None else None,
                rate=float(body["rate"]) if body.get("rate") is not None else None,
                mode=str(body.get("mode", "respond")),
                body_contains=str(body["bodyContains"]) if body.get("bodyContains") is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise ControlError(400, str(exc)) from exc
        return web.json_response({"id": fault.id}, status=201)

    async def add_latency_fault(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            fault = self.org.faults.add_latency(
                str(body.get("prefix", "/")), float(body.get("ms", 0)) / 1000, method=body.get("method")
            )
        except (TypeError, ValueError) as exc:
            raise ControlError(400, str(exc)) from exc
        return web.json_response({"id": fault.id}, status=201)

    async def row_locks(self, request: web.Request) -> web.Response:
        return web.json_response({"locked": self.org.store.locked_records()})

    @staticmethod
    def _record_ids(body: dict[str, Any], *, required: bool) -> list[str] | None:
        ids = body.get("recordIds")
        if ids is None and not required:
            return None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise ControlError(400, "recordIds (a non-empty list of record ids) is required")
        return ids

    async def lock_rows(self, request: web.Request) -> web.Response:
        """Row-lock contention: every write touching these records fails with UNABLE_TO_LOCK_ROW until
        they are unlocked (reads still work, as in Salesforce)."""
        ids = self._record_ids(await _json(request), required=True) or []
        for record_id in ids:
            self.org.store.lock_record(record_id)
        return web.json_response({"locked": self.org.store.locked_records()})

    async def unlock_rows(self, request: web.Request) -> web.Response:
        ids = self._record_ids(await _json(request), required=False)
        if ids is None:
            self.org.store.unlock_all()
        else:
            for record_id in ids:
                self.org.store.unlock_record(record_id)
        return web.json_response({"locked": self.org.store.locked_records()})

    async def remove_fault(self, request: web.Request) -> web.Response:
        if not self.org.faults.remove(request.match_info["id"]):
            raise ControlError(404, "no such fault")
        return web.json_response({"removed": request.match_info["id"]})

    # -- streaming

    async def streaming_clients(self, request: web.Request) -> web.Response:
        return web.json_response({"clients": self.bayeux.describe()})

    async def subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response({"subscriptions": list(self.bayeux.subscribe_log)})

    async def streaming_events(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel")
        events = self.org.bus.retained(channel)
        return web.json_response(
            {
                "lastReplayId": self.org.bus.last_replay_id,
                "retentionSeconds": self.org.bus.retention_s,
                "events": [{"replayId": e.replay_id, "channels": list(e.channels), "data": e.data}
                           for e in events],
            }
        )

    async def forget_clients(self, request: web.Request) -> web.Response:
        body = await _json(request)
        client_id = body.get("clientId")
        return web.json_response({"forgotten": self.bayeux.forget(str(client_id) if client_id else None)})

    async def revoke_tokens(self, request: web.Request) -> web.Response:
        """Revoke one token (`token`) or all; `mode` says how CometD reports it from now on."""
        body = await _json(request)
        mode = body.get("mode")
        if mode is not None:
            if mode not in ("bayeux", "http"):
                raise ControlError(400, "mode must be 'bayeux' or 'http'")
            self.org.faults.cometd_auth_failure = mode
        token = body.get("token")
        return web.json_response({"revoked": self.org.revoke(str(token) if token else None)})

    async def drop_connections(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": self.bayeux.drop_connections()})

    async def hold_connects(self, request: web.Request) -> web.Response:
        body = await _json(request)
        self.org.faults.cometd_hold_connects = bool(body.get("enabled", True))
        self.bayeux.wake_all("fault")
        return web.json_response({"holdConnects": self.org.faults.cometd_hold_connects})

    async def torn_connects(self, request: web.Request) -> web.Response:
        """Tear the next `count` connect answers that carry events (`kind`: see TornConnects)."""
        body = await _json(request)
        count = body.get("count", 1)
        try:
            torn = self.org.faults.tear_connects(str(body.get("kind", "truncated")),
                                                 int(count) if count is not None else None)
        except (TypeError, ValueError) as exc:
            raise ControlError(400, str(exc)) from exc
        return web.json_response({"kind": torn.kind, "count": torn.count}, status=201)

    async def retention(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            seconds = float(body["seconds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(400, "seconds (a number) is required") from exc
        purged = self.org.bus.set_retention(seconds)
        return web.json_response({"retentionSeconds": seconds, "purged": purged})

    async def purge(self, request: web.Request) -> web.Response:
        body = await _json(request)
        up_to = body.get("upToReplayId")
        limit = int(up_to) if up_to is not None else self.org.bus.last_replay_id
        return web.json_response({"purged": self.org.bus.purge(up_to_replay_id=limit)})

    async def gap(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        change_type = str(body.get("changeType", "GAP_UPDATE"))
        record_ids = body.get("recordIds")
        if change_type not in GAP_TYPES or not isinstance(record_ids, list) or not record_ids:
            raise ControlError(400, f"recordIds (a list) and changeType in {GAP_TYPES} are required")
        event = self.org.bus.inject_gap(
            str(body.get("entity", "Opportunity")), [str(r) for r in record_ids],
            change_type=change_type, user_id=user["Id"],
        )
        return web.json_response({"replayId": event.replay_id}, status=201)

    async def overflow(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user = self._user(body)
        event = self.org.bus.inject_gap(
            str(body.get("entity", "Opportunity")), [], change_type="GAP_OVERFLOW", user_id=user["Id"]
        )
        return web.json_response({"replayId": event.replay_id}, status=201)

    async def raw_event(self, request: web.Request) -> web.Response:
        body = await _json(request)
        channel, data = body.get("channel"), body.get("data")
        if not isinstance(channel, str) or not self.org.bus.channel_exists(channel) or not isinstance(data, dict):
            raise ControlError(400, "an existing channel and data (an object) are required")
        event = self.org.bus.inject_raw(channel, data)
        return web.json_response({"replayId": event.replay_id}, status=201)

    async def cdc_entities(self, request: web.Request) -> web.Response:
        body = await _json(request)
        entities = body.get("entities")
        if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
            raise ControlError(400, "entities (a list of object names) is required")
        try:
            self.org.bus.select_entities(entities)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        return web.json_response({"entities": sorted(self.org.bus.cdc_entities)})

    # -- Pub/Sub API

    def _pubsub(self) -> PubSubServer:
        if self.pubsub is None:
            raise ControlError(404, "this emulator runs no Pub/Sub API server")
        return self.pubsub

    async def pubsub_streams(self, request: web.Request) -> web.Response:
        """The open Subscribe streams: topic, outstanding requested events, queued and delivered counts."""
        pubsub = self._pubsub()
        return web.json_response({"streams": pubsub.describe(), "delivered": pubsub.delivered})

    async def pubsub_subscriptions(self, request: web.Request) -> web.Response:
        """Every Subscribe the Pub/Sub server saw, oldest first."""
        return web.json_response({"subscriptions": list(self._pubsub().subscribe_log)})

    async def drop_pubsub_streams(self, request: web.Request) -> web.Response:
        """End every Subscribe stream with UNAVAILABLE (service.unavailable)."""
        return web.json_response({"dropped": self._pubsub().drop_streams()})

    async def hold_pubsub_streams(self, request: web.Request) -> web.Response:
        """Half-open Subscribe streams (no events, no keepalives) until `{"enabled": false}`."""
        body = await _json(request)
        pubsub = self._pubsub()
        pubsub.set_hold(bool(body.get("enabled", True)))
        return web.json_response({"holdStreams": pubsub.hold})


def _records(result: QueryResult) -> list[dict[str, Any]]:
    return list(result.as_json()["records"])
