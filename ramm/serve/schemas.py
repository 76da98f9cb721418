"""The API's request and response bodies (pydantic): ranges checked here answer 422 before any model work.

No field names a path on the server's disk: images travel as base64 PNG/JPEG or multipart uploads.
"""
from __future__ import annotations

import dataclasses
import unicodedata
from typing import Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ramm.config import DECODE_RANGES, METHODS, DecodeConfig, field_docs

MAX_CAPTION_CHARS = 500
MAX_SEED = 2**31 - 1

Caption = Field(min_length=1, max_length=MAX_CAPTION_CHARS, description="what to draw")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _non_blank(v: str) -> str:
    """Refuse a text of only spaces and invisible characters (zero-width spaces, joiners, controls)."""
    if v is not None and all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc", "Zs") for ch in v):
        raise ValueError("text is empty (only spaces or invisible characters)")
    return v


class _Decoding(_Strict):
    """DecodeConfig's fields, each optional (left out: the bundle's setting), checked by DecodeConfig.check."""

    @field_validator(*(f.name for f in dataclasses.fields(DecodeConfig)), check_fields=False)
    @classmethod
    def _in_range(cls, v, info):
        if v is not None:
            DecodeConfig.check(info.field_name, v)
        return v

    def overrides(self) -> dict:
        """The decoding settings this request gives (the others stay the bundle's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(DecodeConfig) if getattr(self, f.name) is not None}


def _decode_field(f: dataclasses.Field):
    """(type, Field) of a DecodeConfig field in a request: the same name, None for the bundle's setting."""
    kind = Literal[METHODS] if f.name == "method" else DECODE_RANGES[f.name][0]
    # `guidance`: the API's name for guidance_scale before the settings became one type, still read
    alias = AliasChoices("guidance_scale", "guidance") if f.name == "guidance_scale" else None
    return Optional[kind], Field(None, validation_alias=alias, allow_inf_nan=False if kind is float else None,
                                 description=f"{field_docs(DecodeConfig)[f.name]} (left out: the bundle's)")


DecodeFields = create_model("DecodeFields", __base__=_Decoding,
                            **{f.name: _decode_field(f) for f in dataclasses.fields(DecodeConfig)})


class ImageRequest(DecodeFields):
    caption: str = Caption
    n: int = Field(4, ge=1, le=16, description="samples to draw")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="fixes the draw when the request is decoded alone")
    k: Optional[int] = Field(None, ge=0, le=16, description="documents to retrieve from the memory (0: none; "
                                                           "left out: as the bundle trained)")

    _caption = field_validator("caption")(_non_blank)


class Evidence(BaseModel):
    """A retrieved document: what the model was conditioned on."""

    id: str
    text: str
    thumbnail: Optional[str] = Field(None, description="base64 PNG of the document's image")
    similarity: Optional[float] = Field(None, description="the retriever's score (None: given, not retrieved)")


class Sample(BaseModel):
    image: Optional[str] = Field(None, description="base64 PNG")
    text: Optional[str] = None
    score: Optional[float] = Field(None, description="re-ranking score, higher is better")


class TaskResponse(BaseModel):
    samples: list[Sample]
    retrieved: list[Evidence]
    batch_requests: int = Field(description="requests decoded together with this one")


class SearchResponse(BaseModel):
    results: list[Evidence]


class DocumentIn(_Strict):
    id: Optional[str] = Field(None, min_length=1, max_length=200, pattern=r"^[\w.:-]+$",
                              description="default: derived from the content, so a retried add is a no-op")
    text: Optional[str] = Field(None, min_length=1, max_length=2000)
    image: Optional[str] = Field(None, min_length=1, description="base64 PNG/JPEG")

    _text = field_validator("text")(_non_blank)

    @field_validator("id")
    @classmethod
    def _named(cls, v):
        if v is not None and not any(ch.isalnum() for ch in v):
            raise ValueError(f"id {v!r} needs a letter or digit (ids such as '.' and '..' are refused)")
        return v

    @model_validator(mode="after")
    def _has_content(self):
        if not self.text and not self.image:
            raise ValueError("a document needs a text, an image or both")
        return self


class DocumentsIn(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentsAdded(BaseModel):
    ids: list[str]
    added: int
    already_present: int
    memory_size: int


class EditRequest(_Strict):
    instruction: str = Field(min_length=1, max_length=MAX_CAPTION_CHARS)
    image: str = Field(min_length=1, description="base64 PNG/JPEG")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    _instruction = field_validator("instruction")(_non_blank)


class AnswerRequest(_Strict):
    question: str = Field(min_length=1, max_length=MAX_CAPTION_CHARS)
    image: Optional[str] = Field(None, description="base64 PNG/JPEG")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    _question = field_validator("question")(_non_blank)
