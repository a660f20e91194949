"""Who may download a cube: embargo until RELEASE, then everyone.

Before the release date only explicit grants count: the data owners' e-mail
addresses, and the "Swedish User" group for data taken on Swedish time. A cube
without RELEASE is embargoed indefinitely (date.max) with a comment saying the
release information must be supplied, as the SST archive does, rather than
being published by accident.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.errors import UserError

SWEDISH_USER_GROUP = "Swedish User"
NO_RELEASE_COMMENT = "No release information provided. Release information needs to be updated."


@dataclass(frozen=True)
class Release:
    date: dt.date
    comment: str | None
    provided: bool       # False when RELEASE was absent and the cube is embargoed indefinitely


@dataclass(frozen=True)
class Grant:
    kind: str            # "user" (e-mail address) or "group"
    principal: str


def release_info(primary_header) -> Release:
    """RELEASE (YYYY-MM-DD) and RELEASEC; astropy has already joined RELEASEC's CONTINUE cards."""
    raw = primary_header.get("RELEASE")
    text = "" if raw is None else str(raw).strip()
    if not text:
        return Release(date=dt.date.max, comment=NO_RELEASE_COMMENT, provided=False)
    try:
        date = dt.datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError as exc:
        raise UserError(f"RELEASE={text!r} is not a date of the form YYYY-MM-DD") from exc
    comment = primary_header.get("RELEASEC")
    comment_text = None if comment is None else str(comment).strip() or None
    return Release(date=date, comment=comment_text, provided=True)


def access_grants(owner_emails: Iterable[str] = (), swedish_data: bool = False) -> list[Grant]:
    grants: list[Grant] = []
    seen: set[str] = set()
    for email in owner_emails:
        address = email.strip()
        if "@" not in address or address.startswith("@") or address.endswith("@") or " " in address:
            raise UserError(f"owner e-mail address {email!r} is not an e-mail address")
        if address.lower() not in seen:
            seen.add(address.lower())
            grants.append(Grant("user", address))
    if swedish_data:
        grants.append(Grant("group", SWEDISH_USER_GROUP))
    return grants


def has_access(release_date: dt.date, grants: Iterable[Grant], user_email: str | None,
               user_groups: Iterable[str], today: dt.date) -> bool:
    """From the release date on everyone has access; before it only granted users and groups."""
    if today >= release_date:
        return True
    email = (user_email or "").strip().lower()
    groups = {g.strip() for g in user_groups}
    for grant in grants:
        if grant.kind == "user" and email and grant.principal.strip().lower() == email:
            return True
        if grant.kind == "group" and grant.principal in groups:
            return True
    return False
