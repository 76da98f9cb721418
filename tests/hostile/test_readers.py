"""`memory search` and `eval retrieval` only read: no -wal / -shm created, a WAL a killed writer left is read
and never checkpointed into the store."""
import gc
import shutil
import sqlite3

import pytest

from hostile_helpers import cli, pair_docs, tiny_encoder


@pytest.fixture
def memory(tmp_path):
    from ramm.retrieval.memory import Memory
    docs = pair_docs()
    Memory.build(docs, tiny_encoder(docs), tmp_path / "memory", progress=False).store.close()  # the writer is done
    return tmp_path / "memory"


def files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_memory_search_creates_and_changes_no_file(memory, capsys):
    before = files(memory)
    assert cli("memory", "search", memory, "red square", "-k", 2) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    gc.collect()
    assert files(memory) == before  # no store.sqlite-wal / -shm, nothing rewritten
    from ramm.retrieval.memory import Memory
    reader = Memory.load(memory, snapshot=True)  # as the CLI opens it: nothing beside the store while it reads
    assert reader.search("red square", k=1) and files(memory) == before


def test_a_wal_left_by_a_killed_writer_is_read_not_checkpointed(memory, tmp_path, capsys):
    writer = sqlite3.connect(memory / "store.sqlite")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE docs SET doc = json_set(doc, '$.source', 'committed after the last checkpoint') WHERE row = 0")
    writer.commit()
    killed = tmp_path / "killed"  # the folder as a kill -9 of that writer leaves it: the commit only in the WAL
    shutil.copytree(memory, killed)
    writer.close()
    assert (killed / "store.sqlite-wal").stat().st_size > 0
    store = (killed / "store.sqlite").read_bytes()
    assert cli("memory", "search", killed, "red square", "-k", 8) == 0
    gc.collect()  # the search's connection closes (where SQLite checkpoints, if it may write)
    assert (killed / "store.sqlite").read_bytes() == store  # a reader never checkpoints
    from ramm.retrieval.memory import Memory
    mem = Memory.load(killed, snapshot=True)
    assert mem.store.documents([0])[0].source == "committed after the last checkpoint"  # the WAL is read


def test_a_snapshot_refuses_to_add(memory):
    from ramm.retrieval.memory import Memory
    with pytest.raises(ValueError, match="read-only snapshot"):
        Memory.load(memory, snapshot=True).add(pair_docs()[:1])
