"""The run lock's lease store on Azure Blob Storage and ADLS Gen2 (``abfss://``, ``abfs://``, ``wasbs://``,
``wasb://`` lakes): each step of :class:`jobs.lock.LeaseStore` is one conditional request on the account's
Blob endpoint, as in jobs/lock_s3.py.

- take: ``Put Blob If-None-Match: *`` (409 BlobAlreadyExists when another run holds the lease);
- read: ``Get Blob``: the body, the ETag, and the heartbeat's age as the *server* measures it (its ``Date``
  header minus the blob's ``Last-Modified``, both its own clock), so that host clocks never enter;
- heartbeat: ``Get Blob``, then ``Put Blob If-Match: <that ETag>`` of the same body, only while the body
  holds the holder's token (412 ConditionNotMet: taken over in between);
- release and takeover: ``Get Blob``, then ``Delete Blob If-Match: <that ETag>``.

A lake ``abfss://<container>@<account>.dfs.core.windows.net/<path>`` keeps its leases in blob
``<path>/_locks/<resource>.lock`` of that container (ADLS Gen2 accounts answer the Blob API too).
Credentials come from the environment: ``AZURE_STORAGE_CONNECTION_STRING`` (an account key or SAS, and
the endpoint: Azurite, sovereign clouds) when it is set, for the account it names; otherwise
``DefaultAzureCredential`` (managed identity, workload identity, ``az login``, ...) on
``https://<account>.blob.<the lake host's suffix>``, which needs azure-identity. azure-storage-blob is the
optional extra ``warmstart[azure]`` (azure-identity comes with it), imported only here.
"""
from __future__ import annotations

import os
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from jobs.lock import LockStoreError, ObjectLeaseStore, _token
from jobs.runtime import UsageError

SCHEMES = ("abfss", "abfs", "wasbs", "wasb")

# What the Blob service answers when a request's condition does not hold: the blob exists (If-None-Match: *),
# its ETag differs (If-Match), or it is gone.
_CONDITION_FAILED = {"BlobAlreadyExists", "ConditionNotMet", "BlobNotFound"}


class _Lease(NamedTuple):
    body: bytes
    etag: str
    renewed: float          # the last heartbeat, as this machine's epoch seconds (from the server's age)


class AzureLocation(NamedTuple):
    account: str
    container: str
    blob: str
    host_suffix: str        # what follows ``<account>.dfs.`` / ``<account>.blob.``: core.windows.net, ...


def azure_location(path: str) -> AzureLocation:
    """The account, container and blob of ``abfss://container@account.dfs.core.windows.net/blob``."""
    scheme, _, rest = path.partition("://")
    authority, _, blob = rest.partition("/")
    container, _, host = authority.partition("@")
    account, _, domain = host.partition(".")
    service, _, suffix = domain.partition(".")
    if scheme.lower() not in SCHEMES or not container or not account or service not in ("dfs", "blob") \
            or not suffix or not blob:
        raise UsageError(f"not an Azure storage path (<scheme>://<container>@<account>.dfs.core.windows.net/...): "
                         f"{path}")
    return AzureLocation(account, container, blob, suffix)


def blob_service(where: AzureLocation) -> Any:
    """A BlobServiceClient for ``where``'s account from the environment; one clear line where the SDK or
    credentials are missing."""
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise UsageError("run locks on Azure lakes need azure-storage-blob: pip install 'warmstart[azure]'") from None
    # One hung request must not outlast the lease (120 s): the SDK's default read timeout is 60 s, retried.
    timeouts = {"connection_timeout": 10, "read_timeout": 20}
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string, **timeouts)
        if service.account_name != where.account:
            raise UsageError(f"AZURE_STORAGE_CONNECTION_STRING is for account {service.account_name}, the lake's "
                             f"is {where.account}")
        return service
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UsageError("run locks on Azure lakes need AZURE_STORAGE_CONNECTION_STRING or azure-identity: "
                         "pip install 'warmstart[azure]'") from None
    return BlobServiceClient(f"https://{where.account}.blob.{where.host_suffix}", credential=DefaultAzureCredential(),
                             **timeouts)


class AzureStore(ObjectLeaseStore):
    """Lease blobs in an Azure storage container, every write conditional on what the last read saw."""

    def __init__(self, service: Any = None):
        self._service = service
        self._guard = threading.Lock()

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        from azure.core import MatchConditions

        return bool(self._request("upload_blob", path, data, overwrite=True, match_condition=MatchConditions.IfMissing))

    def renew(self, path: str, token: str) -> bool:
        from azure.core import MatchConditions

        # A 412 after a read that showed our token is a takeover in between, or our own retried PUT that landed
        # under a new ETag: the second read tells which.
        for _ in range(2):
            found = self._get(path)
            if found is None or _token(found.body) != token:
                return False
            if self._request("upload_blob", path, found.body, overwrite=True, etag=found.etag,
                             match_condition=MatchConditions.IfNotModified):
                return True
        return False

    def delete(self, path: str, token: str | None) -> bool:
        from azure.core import MatchConditions

        found = self._get(path)
        if found is None or _token(found.body) != token:
            return False
        return self._request("delete_blob", path, etag=found.etag,
                             match_condition=MatchConditions.IfNotModified) is not None

    def _get(self, path: str) -> _Lease | None:
        served: list[str] = []

        def date_of(pipeline_response: Any) -> None:
            served.append(pipeline_response.http_response.headers.get("Date", ""))

        download = self._request("download_blob", path, raw_response_hook=date_of)
        if download is None:
            return None
        # Both times on the server's clock where it sends its Date (Azure always does): the age is then exact to
        # the second whatever this host's clock says; without it, this host's clock it is. The last answer's
        # Date: the SDK's retries of a failed try answer too.
        now = parsedate_to_datetime(served[-1]).timestamp() if served and served[-1] else time.time()
        age = now - download.properties.last_modified.timestamp()
        body = self._request("readall", path, on=download)
        return _Lease(body, download.properties.etag, time.time() - age)

    def _client(self, path: str) -> Any:
        where = azure_location(path)
        with self._guard:
            if self._service is None:
                self._service = blob_service(where)
        return self._service.get_blob_client(where.container, where.blob)

    def _request(self, method: str, path: str, *args: Any, on: Any = None, **params: Any) -> Any:
        """One Blob request: its result (True where it has none), or None when its condition failed (see
        _CONDITION_FAILED); any other failure as one line naming the lease."""
        from azure.core.exceptions import AzureError, HttpResponseError

        target = on if on is not None else self._client(path)
        try:
            result = getattr(target, method)(*args, **params)
        except HttpResponseError as exc:
            code = exc.error_code or (exc.response.headers.get("x-ms-error-code") if exc.response is not None else None)
            code = getattr(code, "value", code)         # the SDK's StorageErrorCode enum, or the header's text
            if code in _CONDITION_FAILED:
                return None
            raise LockStoreError(f"run lock {path}: {method} failed: {code or exc.reason or exc}") from exc
        except AzureError as exc:
            raise LockStoreError(f"run lock {path}: {method} failed: {exc}") from exc
        return True if result is None else result
