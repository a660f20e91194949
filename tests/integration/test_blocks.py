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


def test_load_blocks_reads_several_documents_in_one_request(prefect_api, unique: str, tmp_path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What a flow loads before its first step: the saved documents, secrets included, in the order asked."""
    from prefect.blocks.core import Block

    from blocks.broker import BrokerBlock
    from blocks.register import load_block, load_blocks, save_defaults
    from blocks.registry import RegistryBlock
    from blocks.svo import SvoBlock
    from blocks.vault import VaultBlock

    name = f"multi-{unique}"
    other = f"other-{unique}"
    save_defaults({VaultBlock: VaultBlock(root=str(tmp_path)),
                   RegistryBlock: RegistryBlock(dsn=SecretStr("postgresql://u:pw1@h/db")),
                   BrokerBlock: BrokerBlock(amqp_url=SecretStr("amqp://u:pw2@h/"))}, name=name)
    save_defaults({VaultBlock: VaultBlock(root=str(tmp_path / "other"))}, name=other)  # same types, other name

    loads = []
    monkeypatch.setattr(Block, "load", classmethod(lambda cls, *a, **k: loads.append(cls) or None))
    registry, broker, vault, svo = load_blocks([RegistryBlock, BrokerBlock, VaultBlock, SvoBlock], name)
    assert loads == []  # one filter request, not a Block.load per type
    monkeypatch.undo()

    assert registry.dsn.get_secret_value() == "postgresql://u:pw1@h/db"
    assert broker.amqp_url.get_secret_value() == "amqp://u:pw2@h/"
    assert vault.root == str(tmp_path)
    assert svo.model_dump() == load_block(SvoBlock, name).model_dump()
    assert [type(b) for b in load_blocks([VaultBlock], other)] == [VaultBlock]
    assert load_blocks([VaultBlock], other)[0].root == str(tmp_path / "other")

    # the fallback rule of load_block: defaults for "default" only
    with pytest.raises(ValueError, match="missing"):
        load_blocks([VaultBlock, BrokerBlock], f"missing-{unique}")


def test_prefetched_blocks_are_taken_once_by_the_next_load(prefect_api, unique: str, tmp_path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The EGA CLI reads the broker block to choose the flow; the flow's own load of the same documents
    takes those (no second request), once, and only while fresh."""
    from blocks import register
    from blocks.broker import BrokerBlock
    from blocks.register import load_blocks, prefetch_blocks, save_defaults
    from blocks.vault import VaultBlock

    name = f"prefetch-{unique}"
    save_defaults({VaultBlock: VaultBlock(root=str(tmp_path))}, name=name)
    requests = []  # loads that had to ask the API
    real = register._take_prefetched

    def take(slugs, block_name):
        taken = real(slugs, block_name)
        if taken is None:
            requests.append(slugs)
        return taken

    monkeypatch.setattr(register, "_take_prefetched", take)
    broker, vault = prefetch_blocks([BrokerBlock, VaultBlock], name)
    assert len(requests) == 1 and vault.root == str(tmp_path)
    again = load_blocks([BrokerBlock, VaultBlock], name)
    assert again[0] is broker and again[1] is vault and len(requests) == 1
    assert load_blocks([BrokerBlock, VaultBlock], name)[1].root == str(tmp_path) and len(requests) == 2  # taken once
    prefetch_blocks([BrokerBlock, VaultBlock], name)
    monkeypatch.setattr(register, "PREFETCH_SECONDS", 0.0)
    load_blocks([BrokerBlock, VaultBlock], name)
    assert len(requests) == 4  # stale: asked again
