"""Request bodies of the OpenAI-compatible endpoints, validated once at the edge.

Unknown fields are ignored, as OpenAI clients and SDK wrappers send many optional ones
(``presence_penalty``, ``user``, ``logit_bias``...); fields that we accept but cannot honour (``n`` > 1)
are refused with a message rather than silently dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def as_dict(self) -> dict:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=2, description="1, or 2 answers to compare (A/B feedback); not with stream")
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    def stop_strings(self) -> tuple[str, ...]:
        return tuple(s for s in (self.stop or []) if s)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("send one prompt per request (a string, or a list of exactly one)")
            return value[0]
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    """Thumbs (``rating``), a 1-5 ``score``, a ``correction``, or the preferred ``choice`` of an n=2 answer."""

    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64)
    rating: Literal[-1, 1] | None = None
    score: int | None = Field(None, ge=1, le=5)
    choice: int | None = Field(None, ge=0, le=1)
    comment: str | None = Field(None, max_length=10_000)
    correction: str | None = Field(None, max_length=100_000)

    @model_validator(mode="after")
    def _some_feedback(self):
        if self.rating is None and self.score is None and self.choice is None and not self.correction:
            raise ValueError("give rating (-1 or 1), score (1-5), choice (0 or 1) or correction")
        return self

    def thumbs(self) -> int | None:
        """rating, else the score read as thumbs (4-5 up, 1-2 down, 3 neither), else a correction's -1."""
        if self.rating is not None:
            return self.rating
        if self.score is not None:
            return 1 if self.score >= 4 else (-1 if self.score <= 2 else None)
        return -1 if self.correction and self.choice is None else None


MAX_CLASSIFY_INPUTS = 256  # texts per /v1/classify request; more: send several requests


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: one text or a list of texts, scored by a served sequence classifier."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(description=f"a text, or a list of 1-{MAX_CLASSIFY_INPUTS} texts")
    top_k: int | None = Field(None, ge=1, description="labels in each result's `top` (default 1; at most the "
                                                      "number of labels)")

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("give at least one text")
        if len(texts) > MAX_CLASSIFY_INPUTS:
            raise ValueError(f"{len(texts)} texts; send at most {MAX_CLASSIFY_INPUTS} per request")
        if any(not t.strip() for t in texts):
            raise ValueError("texts must not be empty")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
