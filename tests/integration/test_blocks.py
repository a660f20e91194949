"""Block documents round-trip through a real Prefect API, secrets stay secret."""
from __future__ import annotations

import pytest
from pydantic import SecretStr

pytestmark = [pytest.mark.prefect]


def test_blocks_save_load_and_fall_back(prefect_api, unique: str, tmp_path) -> None:
    from blocks.broker import BrokerBlock
    from blocks.register import describe, load_block, save_defaults
    from blocks.registry import RegistryBlock
    from blocks.vault import VaultBlock
    from tasks.vault import FilesystemVault

    # a missing "default" document falls back to the embedded default ...
    assert load_block(VaultBlock, "default").kind == "filesystem"
    # ... but a missing named document is a configuration error
    with pytest.raises(ValueError):
        load_block(VaultBlock, f"missing-{unique}")
    name = f"t-{unique}"
    saved = save_defaults({VaultBlock: VaultBlock(root=str(tmp_path)),
                           BrokerBlock: BrokerBlock(amqp_url=SecretStr("amqp://u:hunter2@h/"))}, name=name)
    assert set(saved.values()) == {"saved"}
    assert save_defaults(name=name)["ingest-vault"] == "kept"
    vault = load_block(VaultBlock, name).vault()
    assert isinstance(vault, FilesystemVault) and str(tmp_path) in vault.uri("x")
    broker = load_block(BrokerBlock, name)
    assert broker.amqp_url.get_secret_value() == "amqp://u:hunter2@h/"
    assert "hunter2" not in str(describe(broker)) and "hunter2" not in repr(broker)
    assert "hunter2" not in repr(broker.transport())
    assert load_block(RegistryBlock, name).dsn is None
