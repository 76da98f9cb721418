"""EmojiBench's names as the library's hooks use them: pseudo-names for RA training (rename_concept,
name_words, base_name) and the caption references (strip_style_prefix, emoji_references)."""
import numpy as np
import pytest

from ramm.corpus.document import Document
from ramm_lab.emojibench import base_name, emoji_references, name_words, rename_concept, strip_style_prefix


def test_rename_concept_gives_main_and_partner_one_new_name_from_the_pool():
    pool = ["red", "flag", "face", "with"]
    main = Document.from_pair("g-1", "google emoji: japan flag", np.zeros((4, 4, 3), np.uint8),
                              metadata={"concept": "1", "name": "japan flag"})
    partner = Document.from_pair("t-1", "twitter emoji: japan flag", np.ones((4, 4, 3), np.uint8),
                                 metadata={"concept": "1", "name": "japan flag"})
    other = Document.from_pair("t-2", "twitter emoji: japan castle", np.ones((4, 4, 3), np.uint8),
                               metadata={"concept": "2", "name": "japan castle"})
    names = set()
    for seed in range(20):
        m, (p, o) = rename_concept(main, [partner, other], pool, np.random.default_rng(seed))
        new = m.text.removeprefix("google emoji: ")
        assert len(new.split()) == 2 and set(new.split()) <= set(pool), new
        assert p.text == f"twitter emoji: {new}" and m.metadata["name"] == p.metadata["name"] == new
        assert o is other and np.array_equal(m.image, main.image) and np.array_equal(p.image, partner.image)
        names.add(new)
    assert len(names) > 5  # fresh names, not one fixed alias
    unnamed = Document.from_pair("x", "a caption", np.zeros((4, 4, 3), np.uint8), metadata={"concept": "1"})
    assert rename_concept(unnamed, [partner], pool, np.random.default_rng(0)) == (unnamed, [partner])
    assert name_words([main, partner, other]) == ["castle", "flag", "japan", "japan"]  # once per concept


def test_rename_concept_renames_the_base_name_across_skin_tones_and_keeps_the_tone():
    pool = ["red", "flag", "face"]
    meta = lambda c, tone: {"concept": c, "base": "w", "tone": tone,  # noqa: E731
                            "name": "waving hand" + (f", {tone} skin tone" if tone else "")}
    main = Document.from_pair("g-wd", "google emoji: waving hand, dark skin tone", np.zeros((4, 4, 3), np.uint8),
                              metadata=meta("wd", "dark"))
    sibling = Document.from_pair("g-wl", "google emoji: waving hand, light skin tone", np.ones((4, 4, 3), np.uint8),
                                 metadata=meta("wl", "light"))
    m, (s,) = rename_concept(main, [sibling], pool, np.random.default_rng(0))
    new = m.metadata["name"].removesuffix(", dark skin tone")
    assert "waving" not in m.text and m.text == f"google emoji: {new}, dark skin tone"
    assert s.text == f"google emoji: {new}, light skin tone"
    assert base_name("kiss: woman, man, light skin tone, dark skin tone") == "kiss: woman, man"
    assert name_words([main, sibling]) == ["hand", "waving"]  # tone words are not names


def test_style_prefix_and_references():
    assert strip_style_prefix("twitter emoji: japan flag") == "japan flag"
    assert strip_style_prefix("japan flag") == "japan flag"
    assert emoji_references({"name": "Japan Flag", "short_names": ["flag-jp", "jp"]}) == ["Japan Flag", "flag-jp", "jp"]
    with pytest.raises(ValueError, match="no caption reference"):
        emoji_references({"name": "", "short_names": []})
