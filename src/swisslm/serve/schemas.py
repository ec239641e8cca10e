# SPDX-License-Identifier: Apache-2.0
"""Request and response bodies (pydantic v2) for the OpenAI-compatible and HF inference APIs.

Requests ignore unknown fields (as vLLM does, so newer clients keep working) but validate the
ones we read: ranges as OpenAI documents them, finite floats only, bounded list sizes. What
depends on the model (vocabulary, context length, server caps) is checked in app.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_REQ = ConfigDict(extra="ignore", allow_inf_nan=False)

MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request
MAX_BATCH_INPUTS = 2048  # prompts (completions) or inputs (embeddings) per request

TokenId = Annotated[int, Field(ge=0, lt=2**31)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class StreamOptions(BaseModel):
    model_config = _REQ
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = _REQ
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM extension; -1 or 0 = off
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # vLLM extension
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None  # vLLM extension
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=1024)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: Stop = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM extension (benchmarks)
    user: str | None = None


class CompletionRequest(_SamplingFields):
    prompt: (str | Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]
             | Annotated[list[TokenId], Field(min_length=1)]
             | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                         Field(min_length=1, max_length=MAX_BATCH_INPUTS)])
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None


class TextContentPart(BaseModel):
    model_config = _REQ
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # tool_calls etc. reach the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)]
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    add_generation_prompt: bool = True  # vLLM extension
    continue_final_message: bool = False  # vLLM extension


class EmbeddingRequest(BaseModel):
    model_config = _REQ
    model: str | None = None
    input: (str | Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]
            | Annotated[list[TokenId], Field(min_length=1)]
            | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                        Field(min_length=1, max_length=MAX_BATCH_INPUTS)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class HFParameters(BaseModel):
    """The text-generation parameters of the HF inference API / TGI (InferenceClient sends these)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # unknown ones answered in app.py
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    do_sample: bool | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    return_full_text: bool | None = None
    seed: Seed | None = None
    stop: Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOP)] | None = None  # older name
    details: bool | None = None
    num_return_sequences: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    top_n_tokens: Annotated[int, Field(ge=0, le=20)] | None = None
    max_time: float | None = None  # accepted, not enforced (the server's own limits apply)


class HFGenerateRequest(BaseModel):
    model_config = _REQ
    inputs: str
    parameters: HFParameters | None = None
    options: dict[str, Any] | None = None  # use_cache / wait_for_model: nothing to do here
    stream: bool = False


# -- responses ----------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "swisslm"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class HFGeneratedText(BaseModel):
    generated_text: str
    details: dict[str, Any] | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
