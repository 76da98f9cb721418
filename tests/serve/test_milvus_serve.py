"""Many writers: two `ramm serve` processes over one Milvus memory, each adding documents while the other
searches. Every acknowledged add is visible to the other server at once (Strong consistency) and stored
exactly once."""
import threading

import httpx

from milvus_server import needs_milvus
from test_durability import free_port, start_server

pytestmark = needs_milvus


def test_two_servers_over_one_milvus_memory_see_every_acknowledged_add_once(bundle, tmp_path, milvus_server):
    from ramm.retrieval.memory import Memory
    from ramm.retrieval.milvus_memory import MilvusMemory
    seed = Memory.load(bundle / "memory")
    mem = MilvusMemory.build(seed.documents(seed.ids), seed.encoder, tmp_path / "memory", uri=milvus_server.url,
                             collection="two_servers", index_type="FLAT", progress=False)
    before = set(mem.ids)
    servers = [None, None]

    def start(i):
        servers[i] = start_server(bundle, tmp_path / "memory", free_port(), wait_s=180)  # two start at once

    starting = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    acked, unseen, errors = [[], []], [], []

    def write_and_cross_read(me):
        mine, other = servers[me][1], servers[1 - me][1]
        with httpx.Client(timeout=30) as c:
            for i in range(4):
                # short texts: the tiny bundle's text encoder truncates, and a text must embed apart from the others
                docs = [{"id": f"s{me}-{i}-{j}", "text": f"document {me} {i} {j}"} for j in range(3)]
                r = c.post(mine + "/v1/memory/documents", json={"documents": docs})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                acked[me] += r.json()["ids"]
                hit = c.get(other + "/v1/memory/search", params={"q": docs[-1]["text"], "k": 1}).json()["results"]
                if not hit or hit[0]["id"] != docs[-1]["id"]:  # the other server must see it already
                    unseen.append((docs[-1]["id"], hit[:1]))

    try:
        assert all(servers), "a server did not start"
        writers = [threading.Thread(target=write_and_cross_read, args=(me,)) for me in range(2)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    finally:
        for proc, _ in filter(None, servers):
            proc.terminate()
            proc.wait(timeout=30)
    assert not errors and not unseen
    assert len(acked[0]) == len(acked[1]) == 12
    ids = mem.ids
    assert len(ids) == len(set(ids)) == len(before) + 24 and set(acked[0] + acked[1]) <= set(ids)
    assert mem.get("s1-3-2").text == "document 1 3 2"
