"""A faithful fake of the SOLARNET Virtual Observatory REST API (Django + Tastypie), on 127.0.0.1.

Rules it keeps, as the real service has them (bmampaey/SOLARNET-service):

- ``ApiKeyOrAnonymousAuthentication``: ``Authorization: ApiKey user:key``; wrong or
  missing credentials make the request anonymous, so reads work and writes get 401.
- Validation comes before authorisation (tastypie's ``save`` runs ``is_valid`` first):
  an invalid write from an anonymous client gets 400, a valid one 401 (empty body);
  a DELETE or PATCH of an unknown oid is 404 before either.
- List responses ``{"meta": {limit, next, offset, previous, total_count}, "objects": [...]}``;
  default limit 20, ``limit=0`` means the resource's max (metadata 100, data_location
  1000, none for dataset/keyword/tag); ``next``/``previous`` and every ``resource_uri`` are
  absolute paths; the oid in a URI is quoted as Django's ``reverse`` does. ``previous``
  is null while ``offset < limit`` (tastypie's ``Paginator.get_previous``).
- Metadata lists use the SVO's ``CachedPaginator``: ``total_count`` is cached per URL and
  filters (``limit``/``offset`` excluded) for 24 hours, ``meta.next`` is computed from that
  stale count, while ``objects`` is the live slice. A client that trusts ``next`` misses
  records added since the count was cached, and sees empty pages after deletions.
- ``data_location.file_size`` is a ``PositiveBigIntegerField``, which tastypie 0.14 does not
  know: it is serialised as a string (``"757440"``); a number or a digit string is accepted.
- ``tags``: a list of ``{"name": ...}`` (created when new; name at most 30 characters) or tag
  resource URIs (must exist); rendered as ``[{"name", "resource_uri"}]``; a PATCH without
  ``tags`` keeps them.
- ``dataset/<name>/`` carries ``metadata: {resource_uri, count}``; the metadata resource of
  dataset CRISP is ``metadata_crisp`` (tastypie ``resource_name``), so ``.../svo/metadata_crisp/``.
- Metadata: POST creates (201 + body, duplicate oid → 400), PATCH updates (202 + body;
  a body containing ``oid`` → 400 "cannot be modified"), DELETE → 204, unknown oid → 404.
  Field values are validated against the dataset's keyword types.
- ``data_location`` in a metadata body: a URI (must exist), a nested object without
  ``resource_uri`` (created), or with one (that location edited in place).
- Data locations are unique on (dataset, file_url) and (dataset, file_path); ``file_path``
  must be relative and avoid ``\\:*?"'<>|`` and CR/LF/NUL.

Test controls: ``expire_count_cache()`` (the 24 hours passed); the fault switch
``fail_next(n, status=500, methods=None)`` answers the next n requests (of those methods) with
``status``; ``after_commit=True`` processes them first (a reply lost after the write).
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

PREFIX = "/service/api/svo"
DEFAULT_USER = "archive@example.org"
DEFAULT_KEY = "s3cret-api-key"
FORBIDDEN_PATH_CHARS = {"\\": "backslash", ":": "colon", "*": "asterisk", "?": "question mark",
                        '"': "double quote", "'": "single quote", "<": "less-than sign",
                        ">": "greater-than sign", "|": "vertical bar", "\r": "carriage return",
                        "\n": "line feed", "\0": "null character"}
DJANGO_SAFE = "/:@&+$,-_.!~*'()"

# The SVO's keyword list for the SST datasets (a representative subset of the real one).
DEFAULT_KEYWORDS: list[tuple[str, str, str]] = [
    ("date_beg", "DATE-BEG", "time (ISO 8601)"), ("date_end", "DATE-END", "time (ISO 8601)"),
    ("date_avg", "DATE-AVG", "time (ISO 8601)"), ("telescop", "TELESCOP", "text"),
    ("instrume", "INSTRUME", "text"), ("filter1", "FILTER1", "text"), ("wavelnth", "WAVELNTH", "real"),
    ("wavemin", "WAVEMIN", "real"), ("wavemax", "WAVEMAX", "real"), ("xposure", "XPOSURE", "real"),
    ("texposur", "TEXPOSUR", "real"), ("nsumexp", "NSUMEXP", "real"), ("obs_hdu", "OBS_HDU", "integer"),
    ("naxis1", "NAXIS1", "integer"), ("naxis2", "NAXIS2", "integer"), ("naxis3", "NAXIS3", "integer"),
    ("naxis4", "NAXIS4", "integer"), ("naxis5", "NAXIS5", "integer"), ("release", "RELEASE", "text"),
    ("releasec", "RELEASEC", "text"), ("observer", "OBSERVER", "text"), ("cdelt1", "CDELT1", "integer"),
    ("dw3_axis_1", "DW3.AXIS.1", "real"), ("scannum", "SCANNUM", "integer"),
    ("cdelt3", "CDELT3", "integer"), ("crval3", "CRVAL3", "integer"),   # integers in the real schemas
]
COUNT_CACHE_SECONDS = 24 * 3600
TAG_MAX_LENGTH = 30


@dataclass
class Fault:
    status: int
    count: int
    after_commit: bool
    methods: frozenset[str] | None = None


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    user: str | None


@dataclass
class _State:
    datasets: dict[str, dict] = field(default_factory=dict)
    keywords: dict[str, list[dict]] = field(default_factory=dict)
    data_locations: dict[int, dict] = field(default_factory=dict)
    metadata: dict[str, dict[str, dict]] = field(default_factory=dict)   # dataset → oid → record
    tags: set[str] = field(default_factory=set)
    next_dl_id: int = 1
    next_kw_id: int = 1


class HttpError(Exception):
    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class FakeSvo:
    def __init__(self, users: dict[str, str] | None = None, datasets: tuple[str, ...] = ("CRISP", "CHROMIS"),
                 keywords: list[tuple[str, str, str]] | None = None) -> None:
        self.users = dict(users or {DEFAULT_USER: DEFAULT_KEY})
        self.state = _State()
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.count_cache: dict[str, tuple[float, int]] = {}   # CachedPaginator: key → (stored at, count)
        self.clock = time.time
        for name in datasets:
            self._add_dataset(name, keywords or DEFAULT_KEYWORDS)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"

    def start(self) -> FakeSvo:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-svo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> FakeSvo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ test controls

    def fail_next(self, count: int, status: int = 500, *, after_commit: bool = False,
                  methods: set[str] | None = None) -> None:
        """Answer the next ``count`` requests (of ``methods``, default all) with ``status``."""
        with self.lock:
            self.faults.append(Fault(status, count, after_commit, frozenset(methods) if methods else None))

    def expire_count_cache(self) -> None:
        """The cached list counts expire (a day has passed)."""
        with self.lock:
            self.count_cache.clear()

    def writes(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]

    def add_data_location(self, dataset: str, file_url: str, file_path: str, file_size: int = 1,
                          thumbnail_url: str | None = None, offline: bool = False) -> dict:
        with self.lock:
            return self._create_dl({"dataset": self._dataset_uri(dataset), "file_url": file_url,
                                    "file_path": file_path, "file_size": file_size,
                                    "thumbnail_url": thumbnail_url, "offline": offline})

    def add_metadata(self, dataset: str, oid: str, data_location: dict | None = None, tags: tuple[str, ...] = (),
                     **fields: Any) -> dict:
        with self.lock:
            self.state.tags.update(tags)
            record = {"oid": oid, "fits_header": fields.pop("fits_header", ""), **fields,
                      "data_location_id": data_location["id"] if data_location else None, "tags": list(tags)}
            self.state.metadata[dataset][oid] = record
            return self._render_metadata(dataset, record)

    def metadata(self, dataset: str, oid: str) -> dict | None:
        with self.lock:
            record = self.state.metadata[dataset].get(oid)
            return None if record is None else self._render_metadata(dataset, record)

    def data_location_users(self, dl_id: int) -> list[str]:
        with self.lock:
            return sorted(oid for ds in self.state.metadata.values() for oid, r in ds.items()
                          if r.get("data_location_id") == dl_id)

    # ------------------------------------------------------------ state helpers

    def _add_dataset(self, name: str, keywords: list[tuple[str, str, str]]) -> None:
        self.state.datasets[name] = {"name": name, "description": f"SST {name} data cubes",
                                     "telescope": {"name": "SST"}, "instrument": {"name": name},
                                     "characteristics": [], "resource": f"metadata_{name.lower()}"}
        self.state.metadata[name] = {}
        rows = []
        for kw_name, verbose, typ in keywords:
            rows.append({"id": self.state.next_kw_id, "name": kw_name, "verbose_name": verbose, "type": typ,
                         "unit": "", "description": "", "dataset": self._dataset_uri(name),
                         "resource_uri": f"{PREFIX}/keyword/{self.state.next_kw_id}/"})
            self.state.next_kw_id += 1
        self.state.keywords[name] = rows

    def _dataset_uri(self, name: str) -> str:
        return f"{PREFIX}/dataset/{quote(name, safe=DJANGO_SAFE)}/"

    def _metadata_uri(self, name: str) -> str:
        return f"{PREFIX}/{self.state.datasets[name]['resource']}/"   # resource_name 'metadata_crisp' 

    def _render_dataset(self, name: str) -> dict:
        d = self.state.datasets[name]
        return {k: v for k, v in d.items() if k != "resource"} | {
            "metadata": {"resource_uri": self._metadata_uri(name), "count": len(self.state.metadata[name])},
            "resource_uri": self._dataset_uri(name)}

    def _render_dl(self, dl: dict) -> dict:
        # tastypie 0.14 has no field class for PositiveBigIntegerField: the size leaves as a string.
        return {**dl, "file_size": str(dl["file_size"]), "resource_uri": f"{PREFIX}/data_location/{dl['id']}/"}

    def _render_tag(self, name: str) -> dict:
        return {"name": name, "resource_uri": f"{PREFIX}/tag/{quote(name, safe=DJANGO_SAFE)}/"}

    def _render_metadata(self, dataset: str, record: dict) -> dict:
        out = {k: v for k, v in record.items() if k != "data_location_id"}
        dl_id = record.get("data_location_id")
        out["data_location"] = self._render_dl(self.state.data_locations[dl_id]) if dl_id in \
            self.state.data_locations else None
        out["tags"] = [self._render_tag(t) for t in sorted(record.get("tags") or [])]
        out["resource_uri"] = f"{self._metadata_uri(dataset)}{quote(record['oid'], safe=DJANGO_SAFE)}/"
        return out

    def _dataset_by_resource(self, resource: str) -> str:
        for name, d in self.state.datasets.items():
            if d["resource"] == resource:
                return name
        raise HttpError(404)

    def _dataset_by_uri(self, uri: Any) -> str | None:
        if not isinstance(uri, str):
            return None
        path = unquote(urlsplit(uri).path)
        for name in self.state.datasets:
            if path == unquote(self._dataset_uri(name)):
                return name
        return None

    def _dl_by_uri(self, uri: str) -> dict:
        path = urlsplit(uri).path
        prefix = f"{PREFIX}/data_location/"
        if path.startswith(prefix) and path.endswith("/") and path[len(prefix):-1].isdigit():
            dl = self.state.data_locations.get(int(path[len(prefix):-1]))
            if dl is not None:
                return dl
        raise HttpError(400, {"error": f"Could not find the provided object via resource URI '{uri}'."})

    # ------------------------------------------------------------ validation

    def _validate_dl(self, values: dict, current_id: int | None) -> dict:
        errors: dict[str, list[str]] = {}
        dataset = self._dataset_by_uri(values.get("dataset"))
        if dataset is None:
            errors.setdefault("dataset", []).append("This field is required and must be a dataset URI.")
        url = values.get("file_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "ftp://")):
            errors.setdefault("file_url", []).append("Enter a valid URL.")
        size = values.get("file_size")
        if isinstance(size, str) and size.strip().isdigit():
            size = values["file_size"] = int(size)             # Django's IntegerField takes digit strings
        if isinstance(size, bool) or not isinstance(size, int):
            errors.setdefault("file_size", []).append("Enter a whole number.")
        elif size < 0:
            errors.setdefault("file_size", []).append("Ensure this value is greater than or equal to 0.")
        path = values.get("file_path")
        if not isinstance(path, str) or not path:
            errors.setdefault("file_path", []).append("This field is required.")
        else:
            if path.endswith("/"):
                errors.setdefault("file_path", []).append("file path cannot end with a /")
            if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
                errors.setdefault("file_path", []).append("file path must be a relative path")
            for char, name in FORBIDDEN_PATH_CHARS.items():
                if char in path:
                    errors.setdefault("file_path", []).append(f"{name} is a discouraged character in file paths")
        thumb = values.get("thumbnail_url")
        if thumb is not None and (not isinstance(thumb, str) or not thumb.startswith(("http://", "https://"))):
            errors.setdefault("thumbnail_url", []).append("Enter a valid URL.")
        if not isinstance(values.get("offline", False), bool):
            errors.setdefault("offline", []).append("Select a valid choice.")
        if not errors:
            for other in self.state.data_locations.values():
                if other["id"] == current_id or other["dataset"] != values["dataset"]:
                    continue
                if other["file_url"] == url:
                    errors.setdefault("__all__", []).append(
                        "Data location with this Dataset and File url already exists.")
                if other["file_path"] == path:
                    errors.setdefault("__all__", []).append(
                        "Data location with this Dataset and File path already exists.")
        if errors:
            raise HttpError(400, {"data_location": errors})
        return values

    @staticmethod
    def _clean_dl(values: dict) -> dict:
        clean = {k: values.get(k) for k in ("dataset", "file_url", "file_size", "file_path", "thumbnail_url")}
        clean["offline"] = values.get("offline", False)
        return clean

    def _store_dl(self, clean: dict) -> dict:
        dl = {"id": self.state.next_dl_id, **clean, "update_time": _now()}
        self.state.next_dl_id += 1
        self.state.data_locations[dl["id"]] = dl
        return self._render_dl(dl)

    def _create_dl(self, values: dict) -> dict:
        clean = self._clean_dl(values)
        self._validate_dl(clean, None)
        return self._store_dl(clean)

    def _resolve_dl(self, value: Any, pending: list) -> int | None:
        """Resolve a metadata body's data_location; writes are queued in ``pending``.

        A URI that names nothing is refused here (tastypie's ``full_hydrate``, before validation and
        authorisation); a nested object is validated by ``_validate_pending`` after authorisation, as
        tastypie's ``save_related`` does.
        """
        if value is None:
            return None
        if isinstance(value, str):
            return self._dl_by_uri(value)["id"]
        if not isinstance(value, dict):
            raise HttpError(400, {"data_location": {"__all__": ["Expected a resource URI or an object."]}})
        if value.get("resource_uri"):
            dl = self._dl_by_uri(value["resource_uri"])
            merged = {**dl, **{k: v for k, v in value.items() if k in
                               ("dataset", "file_url", "file_size", "file_path", "thumbnail_url", "offline")}}
            pending.append(("update", dl["id"], merged))
            return dl["id"]
        new_id = self.state.next_dl_id
        self.state.next_dl_id += 1
        pending.append(("create", new_id, self._clean_dl(value)))
        return new_id

    def _validate_pending(self, pending: list) -> None:
        for action, dl_id, values in pending:
            self._validate_dl(values, dl_id if action == "update" else None)

    def _commit(self, pending: list) -> None:
        for action, dl_id, values in pending:
            if action == "create":
                self.state.data_locations[dl_id] = {"id": dl_id, **values, "update_time": _now()}
            else:
                self.state.data_locations[dl_id].update(values, update_time=_now())

    def _validate_fields(self, dataset: str, body: dict) -> dict:
        errors: dict[str, list[str]] = {}
        clean: dict[str, Any] = {}
        types = {k["name"]: k["type"] for k in self.state.keywords[dataset]}
        for key, value in body.items():
            if key == "fits_header":
                if value is not None and not isinstance(value, str):
                    errors.setdefault(key, []).append("Expected a string.")
                clean[key] = value
                continue
            if key not in types:
                continue                          # Tastypie ignores fields the resource does not have
            problem = _type_problem(types[key], value)
            if problem:
                errors.setdefault(key, []).append(problem)
            clean[key] = value
        if errors:
            raise HttpError(400, {self.state.datasets[dataset]["resource"]: errors})
        return clean

    # ------------------------------------------------------------ request handling

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = "<invalid json>"
        user = self._authenticate(headers.get("authorization", ""))
        with self.lock:
            self.requests.append(RequestRecord(method, parts.path, query, data, user))
            fault = self._take_fault(method)
            if fault is not None and not fault.after_commit:
                return fault.status, {"error_message": "injected fault"}, {}
            try:
                if data == "<invalid json>":
                    raise HttpError(400, {"error": "Request is not valid JSON."})
                status, payload, extra = self._route(method, unquote(parts.path), query, data, user)
            except HttpError as exc:
                status, payload, extra = exc.status, exc.body, {}
            if fault is not None:
                return fault.status, {"error_message": "injected fault"}, {}
            return status, payload, extra

    def _take_fault(self, method: str) -> Fault | None:
        self.faults = [f for f in self.faults if f.count > 0]
        for fault in self.faults:
            if fault.methods is None or method in fault.methods:
                fault.count -= 1
                return fault
        return None

    def _authenticate(self, header: str) -> str | None:
        if not header.startswith("ApiKey "):
            return None
        user, _, key = header[len("ApiKey "):].partition(":")
        return user if user in self.users and self.users[user] == key else None

    def _route(self, method: str, path: str, query: dict, data: Any, user: str | None) -> tuple[int, Any, dict]:
        if not path.startswith(PREFIX + "/"):
            raise HttpError(404)
        segments = path[len(PREFIX) + 1:].split("/")
        if segments[-1] != "":
            raise HttpError(404)                          # Tastypie URLs end with a slash
        segments = segments[:-1]
        if segments == ["dataset"] and method == "GET":
            return 200, self._list(sorted(self.state.datasets), self._render_dataset, path, query, None,
                                   {"name": lambda n, v: n == v}), {}
        if len(segments) == 2 and segments[0] == "dataset" and method == "GET":
            if segments[1] not in self.state.datasets:
                raise HttpError(404, "")
            return 200, self._render_dataset(segments[1]), {}
        if segments == ["keyword"] and method == "GET":
            rows = [k for ds in self.state.keywords.values() for k in ds]
            return 200, self._list(rows, dict, path, query, None, {
                "dataset__name": lambda k, v: self._dataset_by_uri(k["dataset"]) == v,
                "name": lambda k, v: k["name"] == v}), {}
        if segments == ["tag"] and method == "GET":
            return 200, self._list(sorted(self.state.tags), self._render_tag, path, query, None,
                                   {"name": lambda t, v: t == v}), {}
        if len(segments) == 2 and segments[0] == "tag" and method == "GET":
            if segments[1] not in self.state.tags:
                raise HttpError(404, "")
            return 200, self._render_tag(segments[1]), {}
        if method not in ("GET", "POST", "PATCH", "DELETE"):
            raise HttpError(405, "")
        if segments[:1] == ["data_location"]:
            return self._data_location(method, segments[1:], path, query, data, user)
        if segments and segments[0].startswith("metadata_") and len(segments) in (1, 2):
            dataset = self._dataset_by_resource(segments[0])
            if len(segments) == 1:
                return self._metadata_list(method, dataset, path, query, data, user)
            return self._metadata_detail(method, dataset, segments[1], data, user)
        raise HttpError(404, "")

    @staticmethod
    def _authorize(user: str | None) -> None:
        """tastypie's ``authorized_*_detail``: reached only after the data was found valid."""
        if user is None:
            raise HttpError(401, "")

    def _data_location(self, method: str, rest: list[str], path: str, query: dict, data: Any, user: str | None):
        if not rest:
            if method == "GET":
                rows = list(self.state.data_locations.values())
                return 200, self._list(rows, self._render_dl, path, query, 1000, {
                    "dataset__name": lambda d, v: self._dataset_by_uri(d["dataset"]) == v,
                    "file_url": lambda d, v: d["file_url"] == v,
                    "file_path": lambda d, v: d["file_path"] == v}), {}
            if method == "POST":
                values = self._clean_dl(data if isinstance(data, dict) else {})
                self._validate_dl(values, None)
                self._authorize(user)
                created = self._store_dl(values)
                return 201, created, {"Location": created["resource_uri"]}
            raise HttpError(405, "")
        if len(rest) != 1 or not rest[0].isdigit() or int(rest[0]) not in self.state.data_locations:
            raise HttpError(404, "")
        dl = self.state.data_locations[int(rest[0])]
        if method == "GET":
            return 200, self._render_dl(dl), {}
        if method == "PATCH":
            merged = {**dl, **{k: v for k, v in (data or {}).items() if k in dl and k != "id"}}
            self._validate_dl(merged, dl["id"])
            self._authorize(user)
            dl.update(merged, update_time=_now())
            return 202, self._render_dl(dl), {}
        if method == "DELETE":
            self._authorize(user)
            for ds in self.state.metadata.values():
                for record in ds.values():
                    if record.get("data_location_id") == dl["id"]:
                        record["data_location_id"] = None
            del self.state.data_locations[dl["id"]]
            return 204, None, {}
        raise HttpError(405, "")

    def _resolve_tags(self, value: Any, resource: str) -> list[str]:
        """A metadata body's ``tags``: objects with a name (new ones are created) or URIs of existing tags."""
        if not isinstance(value, list):
            raise HttpError(400, {resource: {"tags": ["Expected a list of tags."]}})
        names: list[str] = []
        for item in value:
            if isinstance(item, str):
                path = unquote(urlsplit(item).path)
                prefix = f"{PREFIX}/tag/"
                name = path[len(prefix):-1] if path.startswith(prefix) and path.endswith("/") else None
                if name is None or name not in self.state.tags:
                    raise HttpError(400, {"error": f"Could not find the provided object via resource URI '{item}'."})
            elif isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
                name = item["name"]
                if len(name) > TAG_MAX_LENGTH:
                    raise HttpError(400, {"tag": {"name": [f"Ensure this value has at most {TAG_MAX_LENGTH} "
                                                           f"characters (it has {len(name)})."]}})
            else:
                raise HttpError(400, {"tag": {"name": ["This field is required."]}})
            if name not in names:
                names.append(name)
        return names

    def _metadata_list(self, method: str, dataset: str, path: str, query: dict, data: Any, user: str | None):
        records = self.state.metadata[dataset]
        if method == "GET":
            # the model's Meta.ordering = ['date_beg']: PostgreSQL puts NULLs last, ties in no set order
            rows = sorted(records.values(), key=lambda r: (r.get("date_beg") is None, str(r.get("date_beg") or "")))
            return 200, self._list(rows, lambda r: self._render_metadata(dataset, r), path, query, 100, {
                "oid": lambda r, v: r["oid"] == v}, cached_count=True), {}
        if method != "POST":
            raise HttpError(405, "")
        if not isinstance(data, dict):
            raise HttpError(400, {"error": "Expected a JSON object."})
        resource = self.state.datasets[dataset]["resource"]
        oid = data.get("oid")
        if not isinstance(oid, str) or not oid.strip():
            raise HttpError(400, {resource: {"oid": ["This field is required."]}})
        if len(oid) > 191:
            raise HttpError(400, {resource: {"oid": ["Ensure this value has at most 191 characters."]}})
        if oid in records:
            raise HttpError(400, {resource: {"oid": [f"{dataset} metadata with this Observation ID already exists."]}})
        clean = self._validate_fields(dataset, {k: v for k, v in data.items()
                                                if k not in ("oid", "data_location", "tags", "resource_uri")})
        tags = self._resolve_tags(data["tags"], resource) if "tags" in data else []
        pending: list = []
        dl_id = self._resolve_dl(data.get("data_location"), pending)
        self._authorize(user)
        self._validate_pending(pending)
        self._commit(pending)
        self.state.tags.update(tags)
        record = {"oid": oid, "fits_header": clean.pop("fits_header", ""), **clean, "data_location_id": dl_id,
                  "tags": tags}
        records[oid] = record
        rendered = self._render_metadata(dataset, record)
        return 201, rendered, {"Location": rendered["resource_uri"]}

    def _metadata_detail(self, method: str, dataset: str, oid: str, data: Any, user: str | None):
        records = self.state.metadata[dataset]
        record = records.get(oid)
        if record is None:
            raise HttpError(404, "")
        if method == "GET":
            return 200, self._render_metadata(dataset, record), {}
        if method == "DELETE":
            self._authorize(user)
            del records[oid]
            return 204, None, {}
        if method != "PATCH":
            raise HttpError(405, "")
        if not isinstance(data, dict):
            raise HttpError(400, {"error": "Expected a JSON object."})
        resource = self.state.datasets[dataset]["resource"]
        if "oid" in data:
            raise HttpError(400, {resource: {"oid": ["The value cannot be modified once it has been set"]}})
        clean = self._validate_fields(dataset, {k: v for k, v in data.items()
                                                if k not in ("data_location", "tags", "resource_uri")})
        tags = self._resolve_tags(data["tags"], resource) if "tags" in data else record.get("tags") or []
        pending: list = []
        if "data_location" in data:
            dl_id = self._resolve_dl(data["data_location"], pending)
        else:
            dl_id = record.get("data_location_id")
        self._authorize(user)
        self._validate_pending(pending)
        self._commit(pending)
        self.state.tags.update(tags)
        record.update(clean, data_location_id=dl_id, tags=tags)
        return 202, self._render_metadata(dataset, record), {}

    def _count(self, path: str, query: dict, rows: list, cached: bool) -> int:
        """tastypie counts live; the SVO's CachedPaginator keeps the first count per URL and filters a day."""
        if not cached:
            return len(rows)
        key = path + "?" + urlencode(sorted((k, v) for k, v in query.items() if k not in ("limit", "offset")))
        now = self.clock()
        hit = self.count_cache.get(key)
        if hit is None or now - hit[0] > COUNT_CACHE_SECONDS:
            hit = self.count_cache[key] = (now, len(rows))
        return hit[1]

    def _list(self, rows: list, render, path: str, query: dict, max_limit: int | None, filters: dict,
              cached_count: bool = False) -> dict:
        for key, value in query.items():
            if key in filters:
                rows = [r for r in rows if filters[key](r, value)]
        try:
            limit = int(query.get("limit", 20))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise HttpError(400, {"error": "Invalid limit or offset provided."}) from None
        if limit < 0 or offset < 0:
            raise HttpError(400, {"error": "Invalid limit or offset provided."})
        if limit == 0:
            limit = max_limit or max(len(rows), 1)
        if max_limit is not None:
            limit = min(limit, max_limit)
        total = self._count(path, query, rows, cached_count)
        page = rows[offset:offset + limit]                      # the objects are always live
        base = {k: v for k, v in query.items() if k not in ("limit", "offset")}

        def link(new_offset: int) -> str:
            return f"{quote(path, safe=DJANGO_SAFE)}?{urlencode({**base, 'limit': limit, 'offset': new_offset})}"

        return {"meta": {"limit": limit, "offset": offset, "total_count": total,
                         "next": link(offset + limit) if offset + limit < total else None,
                         "previous": link(offset - limit) if offset - limit >= 0 else None},
                "objects": [render(r) for r in page]}


def _type_problem(svo_type: str, value: Any) -> str | None:
    if value is None:
        return None
    if svo_type == "real":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return "Enter a number."
        try:
            float(value)
        except ValueError:
            return "Enter a number."
    elif svo_type == "integer":
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            return "Enter a whole number."
        try:
            int(value)
        except (TypeError, ValueError):
            return "Enter a whole number."
    elif svo_type == "time (ISO 8601)":
        try:
            dt.datetime.fromisoformat(str(value))
        except ValueError:
            return "Enter a valid date/time."
    elif svo_type == "boolean" and not isinstance(value, bool):
        return "Enter a boolean."
    elif svo_type == "text" and isinstance(value, (dict, list)):
        return "Enter a text."
    return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WSGIServer/0.2"
    wbufsize = 1 << 16                 # headers and body leave in one segment: no delayed-ACK stalls
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake: FakeSvo = self.server.fake  # type: ignore[attr-defined]
        status, payload, extra = fake.handle(self.command, self.path, headers, body)
        if payload is None or payload == "":
            raw = b""
        else:
            raw = json.dumps(payload, default=str).encode()
        self.send_response(status)
        if raw:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if raw and self.command != "HEAD":
            self.wfile.write(raw)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

