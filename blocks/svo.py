"""SVO block: the SOLARNET Virtual Observatory the FITS flows submit cube records to."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

DEFAULT_API_URL = "https://solarnet.oma.be/service/api/svo"
URL_SAFE = "/:=,;@+!$&'()*"   # SST file names use '=', ',' and ':'; keep them readable, encode the rest
URL_SCHEMES = ("http://", "https://", "ftp://")   # what the SVO's URLField accepts


class SvoBlock(Block):
    """The SVO REST API, its credentials, the datasets we own, and how our files are addressed there."""

    _block_type_name = "Ingest SVO"
    _block_type_slug = "ingest-svo"
    _description = ("SOLARNET Virtual Observatory (Tastypie API): URL, user and API key, the datasets the sync "
                    "manages, and the public URL prefix of the science data.")

    url: str = Field(default=DEFAULT_API_URL, description="API root, e.g. https://solarnet.oma.be/service/api/svo")
    user: str | None = Field(default=None, description="SVO user name (the e-mail address of the API key)")
    api_key: SecretStr | None = Field(default=None, description="Tastypie API key (Authorization: ApiKey user:key)")
    datasets: list[str] = Field(default_factory=lambda: ["CRISP", "CHROMIS"],
                                description="SVO datasets the sync treats as ours (remote-only records are deleted)")
    file_url_base: str | None = Field(default=None, description="Public http(s) or ftp URL of the science-data "
                                      "root; a record's file_url is this plus the cube's path. Required to "
                                      "submit: the SVO refuses any other kind of URL")
    thumbnail_url_base: str | None = Field(default=None, description="Public URL of the preview root (empty: "
                                           "records carry no thumbnail_url)")
    timeout: float = Field(default=30.0, description="Seconds per HTTP request")
    retries: int = Field(default=4, description="Retries of a request on 5xx, 429 and connection errors")

    def client(self):
        from flows.fits.svo import SvoClient

        return SvoClient(self.url, self.user, self.api_key.get_secret_value() if self.api_key else None,
                         timeout=self.timeout, retries=self.retries, shared_scope=tuple(self.datasets))

    def require_file_url_base(self) -> str:
        """The public base of our files, checked before anything is sent: the SVO's ``file_url`` is a
        Django URLField (http, https or ftp), so a ``file://`` URL would be refused record by record."""
        from tasks.errors import UserError

        base = (self.file_url_base or "").strip()
        if not base:
            raise UserError("SVO submission needs file_url_base in the SVO block: the public http(s) URL of the "
                            "science-data root (the SVO refuses file:// URLs)")
        if not base.lower().startswith(URL_SCHEMES) or len(base.split("://", 1)[1].strip("/")) == 0:
            raise UserError(f"SVO block file_url_base {base!r} is not an http, https or ftp URL with a host, "
                            "which the SVO requires")
        return base

    def file_url(self, science_root: Path, relative_path: str) -> str:
        base = self.require_file_url_base()
        return f"{base.rstrip('/')}/{quote(relative_path.lstrip('/'), safe=URL_SAFE)}"

    def thumbnail_url(self, preview_root: Path, thumbnail_path: str | None) -> str | None:
        if not (self.thumbnail_url_base and thumbnail_path):
            return None
        try:
            relative = Path(thumbnail_path).resolve().relative_to(Path(preview_root).resolve())
        except ValueError:
            return None
        return f"{self.thumbnail_url_base.rstrip('/')}/{quote(relative.as_posix(), safe=URL_SAFE)}"
