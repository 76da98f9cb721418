"""Webdataset shards as users make them: a key's files apart (plain `tar -C dir .`), member names that are not
UTF-8. Every sample that can be read is read; what cannot is a counted skip naming shard and member."""
import io
import tarfile

from hostile_helpers import pair_docs, tiny_encoder


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shard(path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            add(tf, name, data)


def members_of(docs):
    from ramm.corpus.document import encode_png
    return {d.id: (("png", encode_png(d.image)), ("txt", d.text.encode())) for d in docs}


def test_a_keys_files_apart_in_the_shard_still_make_one_sample(tmp_path):
    from ramm.corpus import open_corpus
    docs = pair_docs()[:6]
    files = members_of(docs)
    # as `tar -C dir .` stores them: every image first, then every caption (a directory listing's order)
    write_shard(tmp_path / "s.tar", [(f"./{k}.{ext}", data) for i in (0, 1) for k, v in files.items()
                                     for ext, data in [v[i]]])
    corpus = open_corpus(tmp_path / "s.tar")
    got = {d.id: d for d in corpus}
    assert sorted(got) == sorted(files) and not corpus.skips.skipped
    assert all(got[d.id].text == d.text and (got[d.id].image == d.image).all() for d in docs)


def test_a_key_missing_its_caption_to_the_end_is_still_a_counted_skip(tmp_path):
    from ramm.corpus import open_corpus
    files = members_of(pair_docs()[:2])
    (a, b) = files
    write_shard(tmp_path / "s.tar", [(f"{a}.png", files[a][0][1]), (f"{b}.png", files[b][0][1]),
                                     (f"{a}.txt", files[a][1][1])])
    corpus = open_corpus(tmp_path / "s.tar")
    assert [d.id for d in corpus] == [a] and dict(corpus.skips.skipped) == {"empty_caption": 1}


def test_a_non_utf8_member_name_is_a_skip_naming_it_and_the_memory_builds(tmp_path):
    from ramm.corpus import open_corpus
    from ramm.retrieval.memory import Memory
    docs = pair_docs()[:3]
    files = members_of(docs)
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 name
    members = [(f"{k}.{ext}", data) for k, v in files.items() for ext, data in v]
    members += [(f"{bad}.png", files[docs[0].id][0][1]), (f"{bad}.txt", b"a latin-1 name")]
    write_shard(tmp_path / "s.tar", members)
    corpus = open_corpus(tmp_path / "s.tar")
    assert sorted(d.id for d in corpus) == sorted(files) and dict(corpus.skips.skipped) == {"bad_encoding": 1}
    mem = Memory.build(corpus, tiny_encoder(docs), tmp_path / "m", progress=False)
    assert len(mem) == 3
