"""The same hostile corpus in every format `open_corpus` reads (a new loader joins FORMATS): a huge-dimension
image is decoded reduced, one whose header is past the pixel limit and a truncated one are counted skips,
mixed sizes pass, and a memory builds from what was read."""
import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from hostile_helpers import pair_docs, tiny_encoder


def header_bomb(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a few KB of data: only its header is needed to refuse it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1) * 16, 9)) + chunk(b"IEND", b""))


def png(pixels: np.ndarray) -> bytes:
    from ramm.corpus.document import encode_png
    return encode_png(pixels)


def hostile_items() -> list[tuple[str, str, bytes]]:
    """(id, caption, image bytes): two good images of different sizes, a small file of huge dimensions, a
    header past the pixel limit, a truncated PNG."""
    good, other = pair_docs()[:2]
    big = io.BytesIO()
    Image.new("1", (4096, 4096), 1).save(big, format="PNG")
    mixed = np.asarray(Image.fromarray(other.image).resize((48, 48)))
    return [("good", good.text, png(good.image)), ("mixed", other.text, png(mixed)), ("huge", "a huge white square", big.getvalue()),
            ("bomb", "a header bomb", header_bomb()), ("cut", "a truncated png", png(good.image)[:60])]


def write_jsonl(root, items):
    for i, _, data in items:
        (root / f"{i}.png").write_bytes(data)
    (root / "c.jsonl").write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "caption": c}) + "\n" for i, c, _ in items))
    return root / "c.jsonl"


def write_csv(root, items):
    write_jsonl(root, items)
    (root / "c.csv").write_text("id,image,caption\n" + "".join(f"{i},{i}.png,{c}\n" for i, c, _ in items))
    return root / "c.csv"


def write_coco(root, items):
    write_jsonl(root, items)
    coco = {"images": [{"id": n, "file_name": f"{i}.png"} for n, (i, _, _) in enumerate(items)],
            "annotations": [{"image_id": n, "caption": c} for n, (_, c, _) in enumerate(items)]}
    (root / "c.json").write_text(json.dumps(coco))
    return root / "c.json"


def write_webdataset(root, items):
    with tarfile.open(root / "c.tar", "w") as tf:
        for i, c, data in items:
            for name, payload in ((f"{i}.png", data), (f"{i}.txt", c.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return root / "c.tar"


FORMATS = {"jsonl": write_jsonl, "csv": write_csv, "coco": write_coco, "webdataset": write_webdataset}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_loader_reads_what_it_can_and_counts_the_rest(fmt, tmp_path):
    from ramm.corpus import open_corpus
    from ramm.corpus.document import MAX_DECODED_SIDE
    from ramm.retrieval.memory import Memory
    corpus = open_corpus(FORMATS[fmt](tmp_path, hostile_items()))
    docs = list(corpus)
    assert len(docs) == 3 and dict(corpus.skips.skipped) == {"image_too_large": 1, "corrupt_image": 1}
    sides = sorted(max(d.image.shape[:2]) for d in docs)
    assert sides == [16, 48, MAX_DECODED_SIDE]  # mixed sizes kept, the huge one decoded reduced
    mem = Memory.build(docs, tiny_encoder(docs), tmp_path / "memory", progress=False)
    assert len(mem) == 3 and len(mem.search(docs[0].text, k=3)) == 3
