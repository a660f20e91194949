"""Fixity audit: re-verify what every archive stored, on a schedule (docs/fixity.md)."""
