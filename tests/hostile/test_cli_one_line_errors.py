"""Read-only and full disks, tampered files and a held memory end the CLI in one line naming the path (the
CLI's one error handler, `ramm.__main__.error_line`), never a traceback. Tests run as root here, so a
read-only or full disk is simulated where the OS call fails."""
import errno
import json
import pathlib
import sqlite3
import tempfile

import pytest

from hostile_helpers import Holder, cli, one_line_error, pair_docs, tiny_encoder


def write_corpus(root: pathlib.Path) -> pathlib.Path:
    from ramm.corpus.document import encode_png
    rows = []
    for d in pair_docs():
        (root / f"{d.id}.png").write_bytes(encode_png(d.image))
        rows.append({"id": d.id, "image": f"{d.id}.png", "caption": d.text, "split": "train"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "corpus.jsonl"


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


@pytest.fixture
def memory(tmp_path):
    from ramm.retrieval.memory import Memory
    docs = pair_docs()
    Memory.build(docs, tiny_encoder(docs), tmp_path / "memory", progress=False)
    return tmp_path / "memory"


def test_a_read_only_out_is_one_line_naming_the_file(corpus, tmp_path, monkeypatch, capsys):
    def read_only(dir=None, prefix="", suffix="", **kw):
        raise OSError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}xyz{suffix}")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli("train", "text-tokenizer", "--corpus", corpus, "--out", tmp_path / "tok", "--vocab_size", 260) == 1
    line = one_line_error(capsys)
    assert f"{tmp_path / 'tok' / 'tokenizer.json'}: Read-only file system" in line


def test_a_full_disk_is_one_line_naming_the_file_and_saying_what_to_do(corpus, tmp_path, monkeypatch, capsys):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file named
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert cli("train", "text-tokenizer", "--corpus", corpus, "--out", tmp_path / "tok", "--vocab_size", 260) == 1
    line = one_line_error(capsys)
    assert "tokenizer.json: No space left on device" in line and "free some space" in line


def test_a_full_disk_during_memory_build_names_the_store_and_keeps_what_was_stored(corpus, tmp_path, monkeypatch,
                                                                                 capsys):
    from ramm.retrieval.store import DocStore
    tiny_encoder(pair_docs()).save_pretrained(tmp_path / "enc")
    init = DocStore.__init__

    def small_disk(self, *a, **kw):
        init(self, *a, **kw)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages + 1}")  # room for one batch, not two
    monkeypatch.setattr(DocStore, "__init__", small_disk)
    rc = cli("memory", "build", "--corpus", corpus, "--encoder", tmp_path / "enc", "--out", tmp_path / "m",
             "--batch_size", 2)
    assert rc == 1
    line = one_line_error(capsys)
    assert f"{tmp_path / 'm' / 'store.sqlite'}: No space left on device" in line and "full" in line
    monkeypatch.setattr(DocStore, "__init__", init)
    dim = json.loads((tmp_path / "m" / "config.json").read_text())["dim"]
    store = DocStore(tmp_path / "m" / "store.sqlite", dim, create=False)
    assert 0 < len(store) < 8 and len(store) % 2 == 0  # the batches committed before the disk filled, whole


@pytest.mark.parametrize("edit", [{"dim": "x"}, {"count": [1]}])
def test_a_tampered_memory_config_is_one_line_naming_it(memory, edit, capsys):
    cfg = memory / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **edit}))
    assert cli("memory", "search", memory, "red") == 1
    line = one_line_error(capsys)
    assert str(cfg) in line and "must be an integer" in line


def test_a_memory_config_whose_dim_disagrees_with_the_store_names_the_store(memory, capsys):
    cfg = memory / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "dim": 64}))
    (memory / "index.faiss").unlink()  # rebuilt from the store's embeddings on load
    assert cli("memory", "search", memory, "red") == 1
    line = one_line_error(capsys)
    assert "store.sqlite" in line and "dim 64" in line and "cannot reshape" not in line


def test_a_second_writer_on_a_memory_is_one_line_naming_the_holder(memory, corpus, tmp_path, capsys):
    tiny_encoder(pair_docs()).save_pretrained(tmp_path / "enc")
    holder = Holder(memory / ".lock")
    try:
        rc = cli("memory", "build", "--corpus", corpus, "--encoder", tmp_path / "enc", "--out", memory)
    finally:
        holder.close()
    assert rc == 1
    assert f"memory {memory} is being written by pid {holder.proc.pid}" in one_line_error(capsys)


def test_a_sqlite_error_never_escapes_as_a_traceback(memory, monkeypatch, capsys):
    from ramm.retrieval import store

    def broken(*a, **kw):
        raise sqlite3.OperationalError("unable to open database file")
    monkeypatch.setattr(store.sqlite3, "connect", broken)
    assert cli("memory", "search", memory, "red") == 1
    assert "store.sqlite" in one_line_error(capsys)


def test_the_next_writer_removes_index_temp_files_a_kill_left_and_a_reader_does_not(memory):
    from ramm.retrieval.memory import Memory
    orphans = [memory / ".index.faiss.k1ll3d.tmp", memory / ".config.json.abc123.tmp"]
    for f in orphans:
        f.write_bytes(b"\0" * 4096)
    mem = Memory.load(memory)
    mem.search("red", k=1)
    assert all(f.exists() for f in orphans)  # readers never write
    mem.add([])
    assert not any(f.exists() for f in orphans)


def test_an_encoder_saved_to_a_full_disk_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    enc = tiny_encoder(pair_docs())

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left") as e:
        enc.save_pretrained(tmp_path / "enc")  # `ramm train retriever` saves through it
    assert e.value.filename == str(tmp_path / "enc" / "model.safetensors")
    assert not list((tmp_path / "enc").iterdir())  # no half-written file under any name


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder whose writes fail as on a read-only mount (tests run as root, where chmod stops nothing)."""
    import os
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def mkdir(path, *a, **kw):
        return refuse(path) if str(path).startswith(str(ro)) else real_mkdir(path, *a, **kw)

    def open_(path, flags, *a, **kw):
        writes = flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)
        return refuse(path) if writes and str(path).startswith(str(ro)) else real_open(path, flags, *a, **kw)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    return ro


@pytest.mark.parametrize("command", ["train text-tokenizer", "train retriever", "memory build"])
def test_a_read_only_out_is_one_line_for_every_writing_command(command, corpus, read_only, tmp_path, capsys):
    tiny_encoder(pair_docs()).save_pretrained(tmp_path / "enc")
    args = {"train text-tokenizer": ["--corpus", corpus, "--vocab_size", 260],
            "train retriever": ["--corpus", corpus, "--trainer.steps", 1],
            "memory build": ["--corpus", corpus, "--encoder", tmp_path / "enc"]}[command]
    assert cli(*command.split(), *args, "--out", read_only / "out") == 1
    line = one_line_error(capsys)
    assert f"{read_only / 'out'}" in line and "Read-only file system" in line, line


def test_generate_into_a_read_only_out_is_one_line(bundle, read_only, capsys):
    rc = cli("generate", "image", "a emoji: red square", "--model", bundle, "--out", read_only / "out", "--n", 1,
             "--device", "cpu", "--no-retrieve")
    assert rc == 1
    line = one_line_error(capsys)
    assert f"{read_only / 'out'}" in line and "Read-only file system" in line, line
