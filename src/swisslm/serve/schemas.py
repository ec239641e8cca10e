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
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # vLLM extension
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
    response_format: ResponseFormat | None = None  # vLLM extension (structured output)


class TextContentPart(BaseModel):
    model_config = _REQ
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # tool_calls etc. reach the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format ("text", "json_object", "json_schema" with json_schema.schema);
    TGI's form {"type": "json_object" | "json", "value": schema} is accepted too."""

    model_config = _REQ
    type: Literal["text", "json_object", "json_schema", "json"]
    json_schema: JSONSchemaFormat | None = None
    value: dict[str, Any] | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)]
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: ResponseFormat | None = None
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


class Grammar(BaseModel):
    """TGI's `grammar`: {"type": "json", "value": <JSON schema>} or {"type": "regex", "value": "..."}
    ("json_object" is accepted as huggingface_hub sends it for response_format json_schema)."""

    model_config = _REQ
    type: Literal["json", "json_object", "regex"]
    value: Any = None


class HFParameters(BaseModel):
    """The text-generation parameters of TGI / the HF inference API (InferenceClient sends these).
    Unknown parameters are ignored, as TGI does."""

    model_config = _REQ
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    do_sample: bool | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    return_full_text: bool | None = None
    seed: Seed | None = None
    stop: Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOP)] | None = None  # older name
    details: bool | None = None
    decoder_input_details: bool | None = None
    num_return_sequences: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    top_n_tokens: Annotated[int, Field(ge=0, le=20)] | None = None
    truncate: Annotated[int, Field(ge=1)] | None = None
    watermark: bool | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None
    max_time: float | None = None  # accepted, not enforced (the server's own limits apply)


class SentencePair(BaseModel):
    """The HF inference API's sentence-similarity inputs."""

    model_config = _REQ
    source_sentence: str
    sentences: Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]


class HFGenerateRequest(BaseModel):
    """POST / (the HF inference API): text-generation for a causal LM (one input or a batch);
    feature-extraction (inputs: text or texts, options at the top level as TEI takes them) or
    sentence-similarity (inputs: {source_sentence, sentences}) for an encoder."""

    model_config = _REQ
    inputs: str | Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_INPUTS)] | SentencePair
    parameters: HFParameters | None = None
    options: dict[str, Any] | None = None  # use_cache / wait_for_model: nothing to do here
    stream: bool = False
    # feature-extraction (TEI's names)
    normalize: bool | None = None
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None
    prompt_name: str | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] | None = None


class TGIGenerateRequest(BaseModel):
    """TGI's POST /generate and /generate_stream body."""

    model_config = _REQ
    inputs: str
    parameters: HFParameters | None = None


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


class TGIError(BaseModel):
    """TGI's error body (its routes answer errors in this shape, as InferenceClient expects)."""

    error: str
    error_type: str


class TGIInfo(BaseModel):
    """GET /info: TGI's server description."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str | None = None
    model_device_type: str | None = None
    model_pipeline_tag: str | None = None
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int
    router: str = "swisslm"
    version: str
    sha: str | None = None
    docker_label: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
