"""Files on records: ContentVersion uploads (one or up to 200 per call), look-ups and downloads.

A signed PDF is uploaded at most once per transaction: each ContentVersion carries the job's
transaction id (`Sign_Transaction_Id__c`), so after an upload whose answer was lost the worker finds
the file by that id instead of uploading a second copy; a new version of a document is found by its
content (`Checksum`). The SOQL for those look-ups is here too, where `sfsign.reads` finds it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from sfsign.salesforce.composite import COLLECTION_LIMIT, RecordResult
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import File
from sfsign.salesforce.session import RestSession, created_id, dump_json
from sfsign.salesforce.soql import soql_quote, validate_id

COLLECTION_BINARY_LIMIT = 500 * 1024 * 1024  # sObject Collections with binary parts: 500 MB of files per request


@dataclass(frozen=True)
class NewFile:
    """One file for `insert_content_versions`: a first version on a record, or a new version of a document.

    The content is `data`, or the file at `path`, read only while the request body is built: a burst's
    upload batch then holds each PDF once (in the body), not also in every waiting job."""

    title: str
    path_on_client: str
    transaction_id: str
    data: bytes | None = None
    path: Path | None = None
    first_publish_location_id: str | None = None
    content_document_id: str | None = None
    reason_for_change: str | None = None
    content_type: str = "application/pdf"

    def content(self) -> bytes:
        """The bytes to upload (blocking when read from `path`: call it off the event loop)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(f"file {self.path_on_client!r} has neither data nor a path")
        return self.path.read_bytes()

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.path.stat().st_size if self.path is not None else 0


@dataclass(frozen=True)
class ContentVersionRef:
    id: str
    content_document_id: str | None


def version_by_transaction_query(transaction_id: str) -> str:
    return (f"SELECT Id, ContentDocumentId FROM ContentVersion WHERE {File.TRANSACTION_ID} = "
            f"{soql_quote(transaction_id)} AND IsLatest = true")


def version_by_checksum_query(content_document_id: str, md5_hex: str) -> str:
    return (f"SELECT Id FROM ContentVersion WHERE ContentDocumentId = '{validate_id(content_document_id)}' "
            f"AND Checksum = {soql_quote(md5_hex)}")


def version_document_query(content_version_id: str) -> str:
    return f"SELECT ContentDocumentId FROM ContentVersion WHERE Id = '{validate_id(content_version_id)}'"


class CollectionBody:
    """The multipart body of an sObject Collections insert with binary parts, streamed: each file is read
    while its part is sent, so a batch of 100 PDFs never sits in the daemon's memory as parts plus a
    joined copy (twice 8 MB per burst batch; the sampled process tree's peak). The same bytes as urllib3's
    `encode_multipart_formdata` of those parts; `len()` is known up front, so requests sends a
    Content-Length (no chunked encoding), and each iteration starts over, so a retried call resends it
    whole. Building it stats the files (blocking: off the event loop)."""

    def __init__(self, files: list[NewFile]) -> None:
        if sum(f.size() for f in files) > COLLECTION_BINARY_LIMIT:
            raise ValueError("the files of one collection request must stay under 500 MB")
        self._boundary = f"sfsign-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={self._boundary}"
        records = [_collection_record(i, file) for i, file in enumerate(files)]
        meta = RequestField(name="collection", data=dump_json({"allOrNone": False, "records": records}).encode())
        meta.make_multipart(content_type="application/json")
        self._meta = self._head(meta) + meta.data + b"\r\n"  # type: ignore[operator]
        self._files = [(self._part_head(i, file), file, file.size()) for i, file in enumerate(files)]
        self._tail = f"--{self._boundary}--\r\n".encode()

    def _head(self, field: RequestField) -> bytes:
        return f"--{self._boundary}\r\n".encode() + field.render_headers().encode("latin-1")

    def _part_head(self, i: int, file: NewFile) -> bytes:
        blob = RequestField(name=f"file{i}", data=b"", filename=file.path_on_client)
        blob.make_multipart(content_type=file.content_type)
        return self._head(blob)

    def __len__(self) -> int:
        return len(self._meta) + sum(len(head) + size + 2 for head, _f, size in self._files) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._meta
        for head, file, size in self._files:
            data = file.content()
            if len(data) != size:  # the Content-Length sent already counted `size`
                raise ValueError(f"file {file.path_on_client!r} changed size while it was uploaded")
            yield head + data + b"\r\n"
        yield self._tail


def _collection_record(i: int, file: NewFile) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "attributes": {"type": "ContentVersion", "binaryPartName": f"file{i}",
                       "binaryPartNameAlias": "VersionData"},
        "Title": file.title,
        "PathOnClient": file.path_on_client,
        File.TRANSACTION_ID: file.transaction_id,
    }
    if file.content_document_id is not None:
        entity["ContentDocumentId"] = validate_id(file.content_document_id)
        if file.reason_for_change:
            entity["ReasonForChange"] = file.reason_for_change[:1000]
    elif file.first_publish_location_id is not None:
        entity["FirstPublishLocationId"] = validate_id(file.first_publish_location_id)
    return entity


class FileCalls(RestSession):
    """The ContentVersion calls of `SalesforceRest`."""

    async def insert_content_versions(self, files: Sequence[NewFile]) -> list[RecordResult]:
        """Upload up to 200 files in one sObject Collections request with binary parts (≤ 500 MB).

        Results in input order; a per-file failure is a `RecordResult(success=False, ...)`. The call
        failing as a whole raises (uncertain: the files may exist; look them up by transaction id).
        """
        if not 0 < len(files) <= COLLECTION_LIMIT:
            raise ValueError(f"1 to {COLLECTION_LIMIT} files per call, not {len(files)}")
        body = await asyncio.get_running_loop().run_in_executor(None, CollectionBody, list(files))
        multipart_type = body.content_type
        raw = await self._call(
            lambda sf: sf.restful("composite/sobjects", method="POST", data=body,
                                  headers={"Content-Type": multipart_type}),
            write=True,
        )
        if not isinstance(raw, list) or len(raw) != len(files):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "sObject Collections returned a result "
                                  f"list of the wrong shape ({type(raw).__name__})", transient=False)
        out = []
        for entry in raw:
            entry = entry if isinstance(entry, Mapping) else {}
            if entry.get("success") and entry.get("id"):
                out.append(RecordResult("ContentVersion", str(entry["id"]), True))
            else:
                errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
                out.append(RecordResult("ContentVersion", "", False, SalesforceError.from_record_error(errors[0])))
        return out

    async def insert_content_version(
        self,
        *,
        title: str,
        path_on_client: str,
        data: bytes,
        first_publish_location_id: str | None,
        transaction_id: str,
        content_type: str = "application/pdf",
        content_document_id: str | None = None,
        reason_for_change: str | None = None,
    ) -> str:
        """Upload a file as a new ContentVersion (multipart, up to 2 GB) and return its 068 id.

        The transaction id lands in `Sign_Transaction_Id__c`, so after an `UncertainOutcome` the
        caller can `find_content_version(transaction_id)` instead of uploading twice. With
        `content_document_id` the file becomes the new latest version of that document (Salesforce
        then forbids `FirstPublishLocationId`: the document is already shared with the record).
        """
        entity: dict[str, Any] = {
            "Title": title,
            "PathOnClient": path_on_client,
            File.TRANSACTION_ID: transaction_id,
        }
        if content_document_id is not None:
            entity["ContentDocumentId"] = validate_id(content_document_id)
            if reason_for_change:
                entity["ReasonForChange"] = reason_for_change[:1000]
        elif first_publish_location_id is not None:
            entity["FirstPublishLocationId"] = validate_id(first_publish_location_id)
        meta = RequestField(name="entity_content", data=dump_json(entity).encode())
        meta.make_multipart(content_type="application/json")
        blob = RequestField(name="VersionData", data=data, filename=path_on_client)
        blob.make_multipart(content_type=content_type)
        body, multipart_type = encode_multipart_formdata([meta, blob], boundary=f"sfsign-{uuid.uuid4().hex}")

        result = await self._call(
            lambda sf: sf.restful(
                "sobjects/ContentVersion/", method="POST", data=body, headers={"Content-Type": multipart_type}
            ),
            write=True,
        )
        return created_id(result)

    async def find_content_version(self, transaction_id: str) -> ContentVersionRef | None:
        """The latest ContentVersion carrying this transaction id, if an upload already happened."""
        rows = await self.query(version_by_transaction_query(transaction_id))
        if not rows:
            return None
        return ContentVersionRef(id=str(rows[0]["Id"]), content_document_id=rows[0].get("ContentDocumentId"))

    @staticmethod
    def files_by_transaction_queries(transaction_ids: Sequence[str]) -> list[str]:
        """SOQL for the latest ContentVersions carrying any of these transaction ids (100 per query, so
        the URL stays short): the worker's fetch step looks them up once per batch."""
        ids = list(dict.fromkeys(transaction_ids))
        return [
            f"SELECT Id, ContentDocumentId, {File.TRANSACTION_ID} FROM ContentVersion WHERE {File.TRANSACTION_ID} "
            f"IN ({', '.join(soql_quote(t) for t in ids[n : n + 100])}) AND IsLatest = true"
            for n in range(0, len(ids), 100)
        ]

    @staticmethod
    def files_by_transaction(results: Iterable[list[dict[str, Any]]]) -> dict[str, ContentVersionRef]:
        """The answers to `files_by_transaction_queries`, by transaction id."""
        return {
            str(row[File.TRANSACTION_ID]): ContentVersionRef(id=str(row["Id"]),
                                                                 content_document_id=row.get("ContentDocumentId"))
            for rows in results for row in rows
        }

    async def find_version_by_checksum(self, content_document_id: str, md5_hex: str) -> str | None:
        """The 068 id of a version of this document with this content (Salesforce's MD5 `Checksum`):
        the upload guard for new versions, which share the transaction id of the first one."""
        rows = await self.query(version_by_checksum_query(content_document_id, md5_hex))
        return str(rows[0]["Id"]) if rows else None

    async def content_document_id(self, content_version_id: str) -> str | None:
        """The 069 ContentDocument id of a ContentVersion (the insert response carries only the 068)."""
        rows = await self.query(version_document_query(content_version_id))
        return str(rows[0]["ContentDocumentId"]) if rows and rows[0].get("ContentDocumentId") else None

    async def download_version_data(self, content_version_id: str) -> bytes:
        path = f"sobjects/ContentVersion/{validate_id(content_version_id)}/VersionData"
        return await self._call(lambda sf: self._raw(sf, "GET", path).content)
