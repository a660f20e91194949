"""BagIt profile JSON documents (APTrust 2.2 and 2.3, BTR 1.0), loaded by flows.apt.profile."""
