import numpy as np
import pytest

from ramm.corpus.document import Document
from ramm.evaluation.clipscore import clip_score, clip_scores
from ramm.evaluation.recognition import Recognizer, nearest_concepts


def test_clip_score_is_100_times_clamped_cosine(colour_encoder, solid):
    images = np.concatenate([solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((0, 255, 255))])
    scores = clip_scores(colour_encoder, images, ["a red", "a red", "a black", "a cyan"])
    assert scores == pytest.approx([100.0, 0.0, 0.0, 100.0], abs=0.2)  # orthogonal -> 0, negative -> clamped to 0
    half = clip_scores(colour_encoder, solid((0, 255, 0)), ["a cyan"])
    assert half[0] == pytest.approx(100 / np.sqrt(2), abs=0.2)
    assert clip_score(colour_encoder, images, ["a red", "a red", "a black", "a cyan"]) == pytest.approx(50.0, abs=0.1)


def test_clip_score_rejects_mismatched_input(colour_encoder, solid):
    with pytest.raises(ValueError, match="2 images and 1 texts"):
        clip_scores(colour_encoder, solid((1, 2, 3), n=2), ["red"])
    with pytest.raises(ValueError, match="list of strings"):
        clip_scores(colour_encoder, solid((1, 2, 3)), "red")


def _doc(concept, style, rgb):
    return Document.from_pair(f"{style}-{concept}", f"{style} emoji: {concept}", np.full((8, 8, 3), rgb, np.uint8),
                              metadata={"concept": concept, "style": style})


def test_recognition_compares_only_against_the_requested_style(colour_encoder, solid):
    # style "a" draws concepts in their own colour; style "b" swaps red and blue
    gallery = [_doc("red", "a", (250, 0, 0)), _doc("blue", "a", (0, 0, 250)), _doc("green", "a", (0, 250, 0)),
               _doc("red", "b", (0, 0, 250)), _doc("blue", "b", (250, 0, 0)), _doc("green", "b", (0, 250, 0))]
    rec = Recognizer(colour_encoder, gallery)
    images = np.concatenate([solid((240, 10, 10)), solid((240, 10, 10)), solid((10, 10, 240)), solid((10, 240, 10))])
    out = rec(images, ["red", "red", "red", "blue"], ["a", "b", "b", "b"])
    assert out.predicted == ["red", "blue", "red", "green"]
    assert out.hits == [True, False, True, False]
    assert out.rate == 0.5


def test_recognition_rejects_bad_input(colour_encoder, solid):
    rec = Recognizer(colour_encoder, [_doc("red", "a", (250, 0, 0))])
    with pytest.raises(ValueError, match="style 'z'"):
        rec(solid((1, 2, 3)), ["red"], ["z"])
    with pytest.raises(ValueError, match="1 images, 2 concepts"):
        rec(solid((1, 2, 3)), ["red", "red"], ["a"])
    with pytest.raises(ValueError, match="gallery document x needs"):
        Recognizer(colour_encoder, [Document.from_pair("x", "t", solid((1, 1, 1))[0])])
    with pytest.raises(ValueError, match="must be"):
        nearest_concepts(np.zeros((2, 3)), np.zeros((2, 4)), ["a", "b"])
