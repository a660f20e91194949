"""SOLARNET Virtual Observatory (SVO) client and the archive→SVO sync plan.

The SVO is a Django/Tastypie REST API. What this module relies on, as the
service behaves:

- ``Authorization: ApiKey <user>:<key>``; bad credentials are not rejected but
  treated as anonymous, so reads succeed and only writes answer 401.
- Lists are ``{"meta": {limit, next, offset, previous, total_count}, "objects": [...]}``;
  ``resource_uri`` values are absolute paths on the service host. The metadata lists
  cache ``total_count`` per URL and filters for a day and compute ``meta.next`` from
  that stale count while ``objects`` is live, so neither is trusted: we page by
  ``offset`` until a page comes back short or empty.
- Validation comes before authorisation: an invalid write with a wrong key gets 400,
  a valid one 401. A 400 therefore says nothing about the key.
- ``data_location.file_size`` comes back as a string; locations are compared normalised.
- ``tags`` are sent as ``[{"name": ...}]`` (the service creates unknown ones, names up to
  30 characters).
- ``dataset/<name>/`` names its metadata resource (``metadata.resource_uri``);
  ``keyword/?dataset__name=`` lists the dataset's keywords: ``name`` is the record
  field, ``verbose_name`` the FITS keyword, ``type`` one of text/integer/real/
  boolean/``time (ISO 8601)``.
- A record is created by POSTing to the metadata URI (``oid``, ``fits_header``,
  one field per keyword, ``data_location`` as a URI or a new object) and updated by
  PATCHing ``<metadata uri><oid>/`` *without* ``oid`` (the service refuses to change it).
- ``data_location`` is unique per dataset on ``file_url`` and on ``file_path``, and
  may be shared by several records. A location describes one *file*: our
  ``file_path`` is the cube's path under the science root (made safe injectively,
  ``svo_file_path``) and ``file_url`` is the public base plus that same path, so one
  determines the other. Editing a location of the same file in place is therefore right
  for every record sharing it; a record that now names another file points at that
  file's location if there is one, else edits its own location when no other record uses
  it, else gets a new one (split), whose URL and path were both checked to be free.

Transient failures (connection errors, 5xx, 429) are retried with exponential
backoff; a 401 is a configuration error and is not.
"""
from __future__ import annotations

import json as _json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from flows.fits.metadata import Keyword, convert
from tasks.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://solarnet.oma.be/service/api/svo"
PAGE_LIMIT = 50
KNOWN_DATASETS = ("CRISP", "CHROMIS")
FILE_PATH_FORBIDDEN = '\\:*?"\'<>|\r\n\0'
TAG_MAX_LENGTH = 30
_SVO_TYPES = {"text": "text", "integer": "integer", "real": "real", "time (ISO 8601)": "datetime"}


class SvoError(Exception):
    """The SVO stayed unavailable through every retry: transient, the caller may retry later."""


class SvoAuthError(UserError):
    """The SVO refused our credentials (HTTP 401/403): fix the API key, retrying cannot help."""


class SvoRejected(UserError):
    """The SVO refused the request as invalid (HTTP 4xx)."""

    def __init__(self, message: str, *, status: int, body: Any = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.attempts = attempts   # > 1: an earlier attempt may have been committed before failing


# ---------------------------------------------------------------- records


@dataclass
class SvoRecord:
    """One cube as the SVO stores it: metadata fields plus where the file is."""

    oid: str
    dataset: str
    fits_header: str
    fields: dict[str, Any]
    file_url: str
    file_path: str
    file_size: int
    thumbnail_url: str | None = None
    offline: bool = False
    tags: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # keywords not sent, each with the reason

    def location(self, dataset_uri: str) -> dict[str, Any]:
        return {
            "dataset": dataset_uri,
            "file_url": self.file_url,
            "file_size": int(self.file_size),
            "file_path": self.file_path,
            "thumbnail_url": self.thumbnail_url,
            "offline": bool(self.offline),
        }


@dataclass(frozen=True)
class RemoteRecord:
    oid: str
    dataset: str
    resource_uri: str
    data_location_uri: str | None = None


def svo_file_path(relative_path: str) -> str:
    """The cube's path under the science root, safe for the SVO: every character it refuses, and
    ``%`` itself, is percent-encoded, so two different paths never map to one ``file_path``
    (the service keeps ``file_path`` unique per dataset, as it does ``file_url``)."""
    text = str(relative_path).strip("/")
    return "".join(f"%{ord(c):02X}" if c in FILE_PATH_FORBIDDEN or c == "%" else c for c in text)


def svo_tag(term: str) -> str:
    """Our vocabulary term as an SVO tag name: the SVO's tags are shared by every dataset and
    their names are case-sensitive primary keys, so we send one spelling, lower case."""
    return " ".join(str(term).split()).lower()


def _svo_value(value: Any, svo_type: str, fits_name: str = "") -> Any:
    """A header value as the SVO keyword type wants it; ValueError when no rule converts it."""
    if value is None or type(value).__name__ == "Undefined":
        return None
    if fits_name.upper() == "WAVEUNIT" and svo_type == "integer" and isinstance(value, str):
        from flows.fits.metadata import wave_unit_exponent

        return wave_unit_exponent(value)          # 'angstrom' → -10, as the keyword means
    if svo_type == "boolean":
        if isinstance(value, bool):
            return value
        raise ValueError("is not a FITS logical (T or F)")
    if svo_type == "integer":
        if isinstance(value, bool):
            raise ValueError("is a logical, not an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
        if isinstance(value, int):
            return value
        raise ValueError("is not a whole number")
    if svo_type in ("real", "time (ISO 8601)", "text"):
        try:
            converted = convert(value, Keyword("", "", _SVO_TYPES[svo_type]))
        except UserError as exc:
            raise ValueError(f"is not a valid {svo_type} value") from exc
        return converted.isoformat() if hasattr(converted, "isoformat") else converted
    raise ValueError(f"has SVO type {svo_type!r}, which we do not know how to send")


def record_fields(header, keywords: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str], list[str]]:
    """One JSON value per SVO keyword found in the header, typed as the *service* declares the keyword.

    Returns (fields, missing keywords, skipped): a value no clear rule converts (CDELT3 = 0.0035 for
    an ``integer`` keyword) is left out with the reason, and the rest of the record goes on.
    """
    fields: dict[str, Any] = {}
    missing: list[str] = []
    skipped: list[str] = []
    for kw in keywords:
        name, fits_name, svo_type = kw["name"], kw["verbose_name"], kw.get("type", "text")
        if fits_name not in header:
            missing.append(fits_name)
            continue
        value = header[fits_name]
        try:
            fields[name] = _svo_value(value, svo_type, fits_name)
        except (ValueError, TypeError, OverflowError) as exc:
            skipped.append(f"{fits_name} = {value!r} not sent: the SVO keyword {name} is {svo_type} and the "
                           f"value {exc}")
    return fields, missing, skipped


def build_record(*, oid: str, dataset: str, header, keywords: Iterable[Mapping[str, Any]], file_url: str,
                 file_path: str, file_size: int, thumbnail_url: str | None = None,
                 offline: bool = False, tags: Iterable[str] = ()) -> tuple[SvoRecord, list[str]]:
    """The record and the keywords absent from the header; keywords left out are in ``record.skipped``."""
    bad = [c for c in file_path if c in FILE_PATH_FORBIDDEN]
    if bad or file_path.startswith("/") or file_path.endswith("/"):
        raise UserError(f"SVO file_path {file_path!r} must be relative and avoid the characters \\:*?\"'<>|")
    if not str(file_url).lower().startswith(("http://", "https://", "ftp://")):
        raise UserError(f"SVO file_url {file_url!r} is not an http, https or ftp URL, which the SVO requires; "
                        "set file_url_base in the SVO block to the public URL of the science-data root")
    fields, missing, skipped = record_fields(header, keywords)
    names: list[str] = []
    for term in tags:
        name = svo_tag(term)
        if len(name) > TAG_MAX_LENGTH:
            skipped.append(f"tag {term!r} not sent: SVO tag names have at most {TAG_MAX_LENGTH} characters")
        elif name and name not in names:
            names.append(name)
    text = header.tostring().strip()
    return SvoRecord(oid, dataset, text, fields, file_url, file_path, int(file_size), thumbnail_url, offline,
                     tags=names, skipped=skipped), missing


# ---------------------------------------------------------------- client


class SvoClient:
    def __init__(self, api_url: str = DEFAULT_API_URL, username: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 4, backoff_base: float | None = None,
                 page_limit: int = PAGE_LIMIT, shared_scope: Iterable[str] = KNOWN_DATASETS,
                 http: httpx.Client | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        parts = urlsplit(self.api_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self.username = username
        self.retries = retries
        self.backoff_base = (float(os.environ.get("INGEST_RETRY_BASE_SECONDS", "1.0"))
                             if backoff_base is None else backoff_base)
        self.page_limit = page_limit
        self.shared_scope = tuple(shared_scope)
        headers = {"Accept": "application/json"}
        if username and api_key:
            headers["Authorization"] = f"ApiKey {username}:{api_key}"
        self._http = http or httpx.Client(timeout=timeout, headers=headers, follow_redirects=True)
        if http is not None:
            self._http.headers.update(headers)
        self._datasets: dict[str, dict] = {}
        self._keywords: dict[str, list[dict]] = {}
        # data location URI → {(dataset, oid)} for the datasets indexed so far
        self._dl_users: dict[str, set[tuple[str, str]]] = {}
        self._indexed: set[str] = set()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SvoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP

    def url(self, uri: str) -> str:
        if uri.startswith(("http://", "https://")):
            return uri
        if uri.startswith("/"):
            return self._origin + uri
        return f"{self.api_url}/{uri}"

    def _request(self, method: str, uri: str, *, params: Mapping[str, Any] | None = None,
                 json: Any = None, allow: tuple[int, ...] = ()) -> tuple[httpx.Response, int]:
        """One logical request, retried on transient failures; returns the response and the attempt count."""
        url = self.url(uri)
        last: str = ""
        for attempt in range(1, self.retries + 2):
            try:
                response = self._http.request(method, url, params=params, json=json)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status in (401, 403):
                    who = f"user {self.username!r}" if self.username else "an anonymous client"
                    raise SvoAuthError(f"the SVO refused {method} {urlsplit(url).path} for {who} (HTTP {status}); "
                                       "check the SVO username and API key")
                if status < 400 or status in allow:
                    return response, attempt
                if status != 429 and status < 500:
                    body = _body(response)
                    raise SvoRejected(f"the SVO rejected {method} {urlsplit(url).path} (HTTP {status}): "
                                      f"{_short(body)}", status=status, body=body, attempts=attempt)
                last = f"HTTP {status}"
            if attempt <= self.retries:
                delay = self.backoff_base * (2 ** (attempt - 1))
                log.warning("SVO %s %s failed (%s); retry %d/%d in %.2fs", method, urlsplit(url).path, last,
                            attempt, self.retries, delay)
                time.sleep(delay)
        raise SvoError(f"the SVO is unavailable: {method} {urlsplit(url).path} failed {self.retries + 1} times, "
                       f"last: {last}")

    def get(self, uri: str, params: Mapping[str, Any] | None = None) -> dict | None:
        response, _ = self._request("GET", uri, params=params, allow=(404,))
        return None if response.status_code == 404 else response.json()

    def iter_objects(self, uri: str, params: Mapping[str, Any] | None = None) -> Iterator[dict]:
        """Every object of a list resource, by ``offset`` until a page comes back short or empty.

        ``meta.next`` and ``meta.total_count`` are not trusted: the SVO's metadata lists compute
        them from a count cached for a day, while the objects are live. An object seen on an
        earlier page (the list shifted under us) is not yielded twice.
        """
        offset = 0
        seen: set[str] = set()
        while True:
            page = self.get(uri, {**(params or {}), "limit": self.page_limit, "offset": offset})
            objects = (page or {}).get("objects") or []
            for obj in objects:
                key = obj.get("resource_uri") if isinstance(obj, Mapping) else None
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                yield obj
            served = (page or {}).get("meta", {}).get("limit") or self.page_limit
            if not objects or len(objects) < min(self.page_limit, int(served)):
                return
            offset += len(objects)

    # ------------------------------------------------------------ resources

    def dataset(self, name: str) -> dict:
        if name not in self._datasets:
            found = self.get(f"dataset/{quote(name, safe='')}/")
            if found is None:
                raise SvoRejected(f"the SVO has no dataset named {name!r}", status=404)
            self._datasets[name] = found
        return self._datasets[name]

    def metadata_uri(self, dataset: str) -> str:
        meta = self.dataset(dataset).get("metadata") or {}
        uri = meta.get("resource_uri") or meta.get("uri")
        if not uri:
            raise SvoRejected(f"SVO dataset {dataset!r} exposes no metadata resource", status=404)
        return uri.split("?", 1)[0]

    def keywords(self, dataset: str) -> list[dict]:
        if dataset not in self._keywords:
            self._keywords[dataset] = list(self.iter_objects("keyword/", {"dataset__name": dataset}))
        return self._keywords[dataset]

    def iter_metadata(self, dataset: str) -> Iterator[dict]:
        return self.iter_objects(self.metadata_uri(dataset))

    def get_metadata(self, dataset: str, oid: str) -> dict | None:
        return self.get(self._detail_uri(dataset, oid))

    def find_data_location(self, dataset: str, file_url: str | None = None, *,
                           file_path: str | None = None) -> dict | None:
        """The dataset's location of this file URL (or, with ``file_path``, of this path)."""
        key, value = ("file_url", file_url) if file_path is None else ("file_path", file_path)
        for obj in self.iter_objects("data_location/", {"dataset__name": dataset, key: value}):
            if obj.get(key) == value:
                return obj
        return None

    def remote_records(self, datasets: Iterable[str]) -> dict[str, RemoteRecord]:
        """oid → what the SVO holds, for the given datasets (also indexes data-location sharing)."""
        out: dict[str, RemoteRecord] = {}
        for dataset in datasets:
            for obj in self.iter_metadata(dataset):
                oid = obj["oid"]
                dl = _dl_uri(obj.get("data_location"))
                if oid in out:
                    log.warning("oid %s is in SVO datasets %s and %s; syncing the first", oid, out[oid].dataset,
                                dataset)
                    continue
                out[oid] = RemoteRecord(oid, dataset, obj["resource_uri"], dl)
                self._index_use(dl, dataset, oid)
            self._indexed.add(dataset)
        return out

    # ------------------------------------------------------------ writes

    def create(self, record: SvoRecord) -> dict:
        payload = {"oid": record.oid, "fits_header": record.fits_header, **record.fields,
                   "tags": [{"name": t} for t in record.tags], "data_location": self._location_for_new(record)}
        try:
            response, _ = self._request("POST", self.metadata_uri(record.dataset), json=payload)
        except SvoRejected as exc:
            # A POST that timed out or got a 5xx may have been committed before the retry was refused
            # as a duplicate. The SVO validates before it authorises, so that 400 is no proof that our
            # key could write: the record counts as ours only if it holds what we sent.
            existing = self.get_metadata(record.dataset, record.oid) if exc.attempts > 1 else None
            if existing is None or not _holds(existing, record):
                raise
            created = existing
        else:
            created = _json_or_none(response) or self.get_metadata(record.dataset, record.oid) or {}
        self._index_use(_dl_uri(created.get("data_location")), record.dataset, record.oid)
        return created

    def update(self, record: SvoRecord) -> dict:
        existing = self.get_metadata(record.dataset, record.oid)
        if existing is None:
            raise SvoRejected(f"the SVO has no {record.dataset} record {record.oid!r} to update", status=404)
        payload: dict[str, Any] = {"fits_header": record.fits_header, **record.fields,
                                   "tags": [{"name": t} for t in record.tags]}
        location = self._location_for_update(record, existing.get("data_location"))
        if location is not None:
            payload["data_location"] = location
        response, _ = self._request("PATCH", self._detail_uri(record.dataset, record.oid), json=payload)
        updated = _json_or_none(response) or self.get_metadata(record.dataset, record.oid) or {}
        self._index_drop(record.dataset, record.oid)
        self._index_use(_dl_uri(updated.get("data_location")), record.dataset, record.oid)
        return updated

    def submit(self, record: SvoRecord) -> str:
        """Create or update; returns "created" or "updated"."""
        if self.get_metadata(record.dataset, record.oid) is None:
            self.create(record)
            return "created"
        self.update(record)
        return "updated"

    def delete(self, remote: RemoteRecord) -> None:
        self._request("DELETE", remote.resource_uri, allow=(404,))
        self._index_drop(remote.dataset, remote.oid)

    # ------------------------------------------------------------ data locations

    def _location_for_new(self, record: SvoRecord) -> str | dict[str, Any]:
        desired = record.location(self.dataset(record.dataset)["resource_uri"])
        for found in (self.find_data_location(record.dataset, record.file_url),
                      self.find_data_location(record.dataset, file_path=record.file_path)):
            if found is not None:
                # This file already has a location (the same path means the same file, perhaps under a
                # new URL): share it, corrected if it is out of date.
                return found["resource_uri"] if same_location(found, desired) else \
                    {**desired, "resource_uri": found["resource_uri"]}
        return desired

    def _location_for_update(self, record: SvoRecord, current: Any) -> str | dict[str, Any] | None:
        """None when the record's data location is already right; else a URI or a nested object.

        A location describes a file, and ``file_path`` and ``file_url`` each name it (both come from
        the cube's path under the science root), so: the file's own location is used (edited in place
        when out of date, shared or not); failing that, the record's current location is moved to the
        file when no other record uses it; otherwise the record gets a new one (split) under a URL and
        a path that were both just found free.
        """
        if isinstance(current, str):
            current = self.get(current) or {}
        desired = record.location(self.dataset(record.dataset)["resource_uri"])
        if current and same_location(current, desired):
            return None
        current_uri = (current or {}).get("resource_uri")
        if current and current.get("file_url") == desired["file_url"]:
            return {**desired, "resource_uri": current_uri}
        found = self._location_for_new(record)
        if not isinstance(found, dict) or found.get("resource_uri"):
            return found                            # that file's own location
        if current_uri and not self._shared(current_uri, record.dataset, record.oid):
            return {**desired, "resource_uri": current_uri}   # ours alone: move it to the new file
        return desired                              # split: a new location, its URL and path free

    def _shared(self, dl_uri: str, dataset: str, oid: str) -> bool:
        for name in self.shared_scope:
            if name not in self._indexed:
                try:
                    self.remote_records([name])
                except SvoRejected as exc:
                    if exc.status != 404:
                        raise
                    self._indexed.add(name)
        users = self._dl_users.get(dl_uri, set()) - {(dataset, oid)}
        return bool(users)

    def _index_use(self, dl_uri: str | None, dataset: str, oid: str) -> None:
        if dl_uri:
            self._dl_users.setdefault(dl_uri, set()).add((dataset, oid))

    def _index_drop(self, dataset: str, oid: str) -> None:
        for users in self._dl_users.values():
            users.discard((dataset, oid))

    def _detail_uri(self, dataset: str, oid: str) -> str:
        return f"{self.metadata_uri(dataset)}{quote(oid, safe='')}/"


# ---------------------------------------------------------------- sync


@dataclass
class SyncPlan:
    delete: list[RemoteRecord] = field(default_factory=list)
    submit: list[SvoRecord] = field(default_factory=list)
    update: list[SvoRecord] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.delete or self.submit or self.update)


@dataclass
class SyncReport:
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)   # (oid, action, message)


def plan_sync(local: Mapping[str, SvoRecord], remote: Mapping[str, RemoteRecord],
              update_existing: bool = False) -> SyncPlan:
    """The archive is the source of truth: delete what only the SVO has, submit what only we have,
    and update shared records only when asked. A record that moved dataset is deleted and resubmitted."""
    plan = SyncPlan()
    for oid in sorted(remote):
        record = local.get(oid)
        if record is None or record.dataset != remote[oid].dataset:
            plan.delete.append(remote[oid])
    for oid in sorted(local):
        record = local[oid]
        there = remote.get(oid)
        if there is None or there.dataset != record.dataset:
            plan.submit.append(record)
        elif update_existing:
            plan.update.append(record)
    return plan


def apply_plan(client: SvoClient, plan: SyncPlan, dry_run: bool = False) -> SyncReport:
    """Deletes first (they free file URLs and paths), then creations, then updates.

    A record the SVO rejects is reported and the rest goes on; bad credentials
    (SvoAuthError) and an unavailable service (SvoError) stop the run.
    """
    report = SyncReport(dry_run=dry_run)
    steps: list[tuple[str, list, Any, list[str]]] = [
        ("delete", plan.delete, client.delete, report.deleted),
        ("submit", plan.submit, client.create, report.submitted),
        ("update", plan.update, client.update, report.updated),
    ]
    for action, items, call, done in steps:
        for item in items:
            if dry_run:
                log.info("[dry-run] would %s %s record %s", action, item.dataset, item.oid)
                done.append(item.oid)
                continue
            try:
                call(item)
            except SvoAuthError:
                raise
            except SvoRejected as exc:
                log.error("SVO %s of %s failed: %s", action, item.oid, exc.message)
                report.failed.append((item.oid, action, exc.message))
                continue
            log.info("SVO %s %s record %s", action, item.dataset, item.oid)
            done.append(item.oid)
    return report


# ---------------------------------------------------------------- helpers


def _norm_location(location: Mapping[str, Any]) -> tuple:
    """What a location says, normalised: the SVO returns ``file_size`` as a string, may leave out or
    blank an empty ``thumbnail_url``, and writes booleans as it likes."""
    try:
        size = int(str(location.get("file_size")).strip())
    except ValueError:
        size = location.get("file_size")
    offline = location.get("offline")
    if isinstance(offline, str):
        offline = offline.strip().lower() in ("true", "1", "t")
    return (location.get("file_url"), size, location.get("file_path"), location.get("thumbnail_url") or None,
            bool(offline))


def same_location(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return _norm_location(a) == _norm_location(b)


def _holds(existing: Mapping[str, Any], record: SvoRecord) -> bool:
    """Does the SVO's record hold what we sent (so a refused retry of our POST was our own commit)?"""
    location = existing.get("data_location")
    url = location.get("file_url") if isinstance(location, Mapping) else None
    return (str(existing.get("fits_header") or "").strip() == record.fits_header.strip()
            and url == record.file_url)


def _dl_uri(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("resource_uri")
    return value if isinstance(value, str) and value else None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _json_or_none(response: httpx.Response) -> dict | None:
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _short(body: Any, limit: int = 400) -> str:
    text = body if isinstance(body, str) else _json.dumps(body, default=str)
    text = " ".join(text.split())
    return text[:limit] or "(empty body)"
