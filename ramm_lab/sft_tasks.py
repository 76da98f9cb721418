"""EmojiBench's instruction-tuning wordings: the tasks only its pairs make (skin-tone edits, style transfer,
category / skin-tone / flag-country questions) and its segmentation wordings, as `CorpusHooks.sft_templates`
(merged over the library's, `ramm.training.sft_data.with_templates`), with the default weights of its questions.

Nine wordings per task; the last ones are the held-out templates (docs/sft.md).
"""
from __future__ import annotations

EMOJIBENCH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "edit": ("make the skin tone {tone}", "change the skin tone to {tone}", "use a {tone} skin tone",
             "edit: skin tone {tone}", "recolour the skin {tone}", "skin tone: {tone}",
             "same emoji, {tone} skin tone", "switch to the {tone} skin tone", "give it the {tone} skin tone"),
    "style": ("draw it in the {style} style", "redraw this as a {style} emoji", "convert to {style} style",
              "the {style} version of this", "{style} style, please", "same emoji in {style} art",
              "restyle this: {style}", "how would {style} draw this?", "render this like {style} does"),
    "segment": ("segment the foreground", "give the mask of this image", "silhouette of this",
                "which pixels are the object?", "foreground mask", "mask it", "draw its outline filled black",
                "segment this emoji", "cut out the foreground"),
    "vqa_category": ("what category is this?", "which category does this belong to?", "category?",
                     "name the category of this image", "what is the category of this emoji?",
                     "emoji category:", "which group is this emoji in?", "tell me its category",
                     "what kind of thing is this?"),
    "vqa_tone": ("what skin tone is this?", "which skin tone is shown?", "skin tone?",
                 "tell me the skin tone", "what is the skin colour?", "skin tone of this emoji:",
                 "which tone is the skin?", "name the skin tone", "how dark is the skin?"),
    "vqa_country": ("which country is this flag?", "whose flag is this?", "country?",
                    "name the country of this flag", "what country is this?", "flag of which country?",
                    "which nation does this flag stand for?", "tell me the country",
                    "this flag belongs to which country?"),
}
QUESTION_WEIGHTS = {"vqa_category": 1.5, "vqa_tone": 1.0, "vqa_country": 0.5}  # SFTMixture.questions' default (chosen on val, docs/sft.md)
