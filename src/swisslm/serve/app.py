# SPDX-License-Identifier: Apache-2.0
"""The HTTP server: OpenAI-compatible endpoints, the HF inference `POST /` shape, health, metrics.

    create_app(model) -> FastAPI        # uvicorn.run(app, host="127.0.0.1", port=8000)

Causal LMs are served by the continuous-batching Engine (engine.py); encoders (no LM head) serve
/v1/embeddings. Every client mistake answers 4xx with an OpenAI-style body
`{"error": {"message", "type", "param", "code"}}`; the model name in a request is only compared
with the served name, never used as a path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation.params import SamplingParams
from .auth import APIKeyMiddleware
from .engine import Engine, EngineStoppedError, QueueFullError, Sequence, TokenEvent
from .errors import APIError, BodyLimitMiddleware, MetricsMiddleware, error_json, error_payload
from .metrics import Metrics
from .schemas import (
    MAX_STOP,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    Health,
    HFGeneratedText,
    HFGenerateRequest,
    HFParameters,
    ModelCard,
    ModelList,
    ResponseFormat,
    SentencePair,
    TGIError,
    TGIGenerateRequest,
    TGIInfo,
    TopLogprob,
    Usage,
)

logger = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)
}
# Generation endpoints answer JSON, or an SSE stream when the body says "stream": true. Before
# OpenAPI 3.2 (itemSchema) a text/event-stream schema describes one event: its fields, data a
# JSON text.
SSE_EVENT = {"text/event-stream": {"schema": {"type": "object", "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}}}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 200: {"content": SSE_EVENT}}
# TGI's routes answer errors as TGI does: {"error", "error_type"}, 422 for a request it refuses
# (what InferenceClient parses); the outer middlewares' 401 / 413 keep the OpenAI shape.
TGI_PATHS = frozenset({"/", "/generate", "/generate_stream"})
TGI_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: {"model": ErrorResponse} for code in (401, 413)},
    **{code: {"model": TGIError} for code in (404, 422, 429, 503)},
}
TGI_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {**TGI_RESPONSES, 200: {"content": SSE_EVENT}}
HF_DEFAULT_MAX_NEW_TOKENS = 100  # InferenceClient documents this default
MAX_BEST_OF = 8
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy completions default


@dataclass
class ServerSettings:
    model_name: str
    max_tokens: int = 4096  # cap on max_tokens / max_new_tokens per request
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    adapters: tuple[str, ...] = ()  # names a request's model may pick besides model_name (LoRA)


def create_app(
    model: Any,
    model_name: str = "swisslm",
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    max_model_len: int | None = None,
    max_queue: int = 256,
    max_tokens: int = 4096,
    max_body_bytes: int = 1 << 20,
    prefill_chunk: int = 512,
    engine_options: dict[str, Any] | None = None,
) -> FastAPI:
    """Build the app and start its engine thread (stopped when the app shuts down, or by
    `app.state.shutdown()`)."""
    if model.tokenizer is None:
        raise ValueError(f"{getattr(model, 'source', 'model')}: the checkpoint has no tokenizer; cannot serve it")
    metrics = Metrics()
    settings = ServerSettings(model_name, max_tokens, max_body_bytes, api_key)
    engine: Engine | None = None
    if model.config.lm_head:
        engine = Engine(model, max_batch=max_batch, max_model_len=max_model_len, max_queue=max_queue,
                        metrics=metrics, prefill_chunk=prefill_chunk, **(engine_options or {}))
        engine.start()
    context_len = engine.max_model_len if engine else min(max_model_len or 1 << 30,
                                                          model.config.max_position_embeddings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if engine is not None:
            engine.stop()

    app = FastAPI(title="swisslm", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible and HF-inference text generation with continuous batching")
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.shutdown = engine.stop if engine is not None else (lambda: None)
    server = _Server(model, settings, engine, metrics, context_len)
    _install_error_handlers(app)
    _routes(app, server)
    _document(app)
    # Middleware runs outermost-last: body limit and metrics see every request, auth inside them.
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    return app


def _document(app: FastAPI) -> None:
    """The spec says what the server does: validation errors are 400 with ErrorResponse (FastAPI
    would document 422 + HTTPValidationError, which this server never sends)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path, item in spec.get("paths", {}).items():
                for op in item.values():
                    if path not in TGI_PATHS:
                        op.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- errors -------------------------------------------------------------------------------------


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON", None
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(req: Request, exc: APIError) -> JSONResponse:
        if req.url.path in TGI_PATHS:
            return _tgi_error(exc.status, exc.message, exc.type)
        return error_json(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        if req.url.path in TGI_PATHS:
            return _tgi_error(422, message, "invalid_request_error")
        return error_json(400, message, "invalid_request_error", None, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if req.url.path in TGI_PATHS and exc.status_code == 400:  # e.g. a body that is not UTF-8
            return _tgi_error(400, str(exc.detail), kind)
        return error_json(exc.status_code, str(exc.detail), kind, None, None, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> JSONResponse:  # a bug: log it, answer cleanly
        logger.exception("unhandled error")
        return error_json(500, "internal server error", "server_error", None, None)


def _tgi_error(status: int, message: str, kind: str) -> JSONResponse:
    """TGI's error body; a refused request (400 elsewhere) is TGI's 422 "validation"."""
    if status == 400:
        status, kind = 422, "validation"
    elif status == 429:
        kind = "overloaded"
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)


# -- the server's logic -------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _deliver(loop: asyncio.AbstractEventLoop, q: asyncio.Queue, index: int, ev: TokenEvent) -> None:
    loop.call_soon_threadsafe(q.put_nowait, (index, ev))


class _Server:
    def __init__(self, model: Any, settings: ServerSettings, engine: Engine | None, metrics: Metrics,
                 context_len: int) -> None:
        self.model = model
        self.tok = model.tokenizer
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.context_len = context_len
        self.vocab_size = model.config.vocab_size
        self.created = _now()
        self._embed_lock = threading.Lock()
        if engine is None:  # encoder: pooling and input limit from the folder (sentence-transformers files)
            from ..mixins.pooling import PoolingConfig

            self.pooling = PoolingConfig.from_folder(getattr(model, "source", None))
            if self.pooling.max_seq_length:
                self.context_len = min(self.context_len, self.pooling.max_seq_length)
        self.token_text: Callable[[int], str] = lru_cache(maxsize=1 << 16)(self._token_text)
        self._grammars: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def _token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    # -- checks ---------------------------------------------------------------------------------
    def adapters(self) -> tuple[str, ...]:
        """The LoRA adapters a request's model name may pick besides the base model."""
        if self.engine is not None and self.engine.adapters:
            return tuple(self.engine.adapters)
        return tuple(self.settings.adapters)

    def resolve_model(self, name: str | None, strict: bool = False) -> str | None:
        """The LoRA adapter a request's model name picks, None for the base model. A server of one
        model answers to any name (huggingface_hub's InferenceClient sends "dummy" or "tgi");
        with adapters, or `strict`, a name that matches nothing is a 404."""
        served, adapters = self.settings.model_name, self.adapters()
        if name is None or name == served:
            return None
        if name in adapters:
            return name
        if strict or adapters:
            known = ", ".join(f"'{n}'" for n in (served, *adapters))
            raise APIError(404, f"the model '{name[:200]}' does not exist; this server serves {known}",
                           "not_found_error", "model_not_found", "model")
        return None

    def require_engine(self, endpoint: str) -> Engine:
        if self.engine is None:
            raise APIError(400, f"the model '{self.settings.model_name}' is an encoder; it serves /v1/embeddings "
                           f"and POST / (feature-extraction, sentence-similarity), not {endpoint}",
                           code="model_not_supported", param="model")
        if not self.engine.alive:
            raise APIError(503, "the generation engine is not running", "server_error", "engine_stopped")
        return self.engine

    def check_ids(self, ids: list[int], param: str) -> None:
        bad = [i for i in ids if i >= self.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})",
                           param=param)

    def budget(self, prompt_len: int, requested: int | None, default: int | None, param: str) -> int:
        """The max_tokens a sequence gets, or a 400 naming the limit it breaks."""
        ctx = self.context_len
        if prompt_len == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if prompt_len >= ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens; your prompt has "
                           f"{prompt_len} tokens", code="context_length_exceeded", param="messages"
                           if param == "max_completion_tokens" else "prompt")
        if requested is not None and requested > self.settings.max_tokens:
            raise APIError(400, f"{param} must be <= {self.settings.max_tokens} on this server, got {requested}",
                           param=param)
        if requested is not None and prompt_len + requested > ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens; you requested "
                           f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for "
                           "the completion)", code="context_length_exceeded", param=param)
        if requested is None:
            requested = min(default or ctx, self.settings.max_tokens, ctx - prompt_len)
        return requested

    def logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        if not bias:
            return None
        out = {}
        for k, v in bias.items():
            try:
                tid = int(k)
            except ValueError:
                raise APIError(400, f"logit_bias keys must be token ids, got {k[:50]!r}", param="logit_bias") from None
            if not 0 <= tid < self.vocab_size:
                raise APIError(400, f"logit_bias token id {tid} is outside the vocabulary", param="logit_bias")
            out[tid] = v
        return out

    def params(self, req: Any, max_tokens: int, index: int, logprobs: int | None, constraint: Any = None,
               prompt_logprobs: int | None = None) -> SamplingParams:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = req.seed + index if req.seed is not None and index else req.seed
        return SamplingParams(
            max_new_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p or 1.0, top_k=max(req.top_k or 0, 0), min_p=req.min_p or 0.0,
            typical_p=req.typical_p or 1.0, constraint=constraint, prompt_logprobs=prompt_logprobs,
            repetition_penalty=req.repetition_penalty or 1.0, presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, logit_bias=self.logit_bias(req.logit_bias),
            seed=None if seed is None else seed % 2**64, stop=stop, ignore_eos=req.ignore_eos, logprobs=logprobs)

    # -- running sequences ----------------------------------------------------------------------
    def start(self, jobs: list[tuple[list[int], SamplingParams]],
              adapter: str | None = None) -> tuple[list[Sequence], asyncio.Queue]:
        engine = self.engine
        assert engine is not None
        if len(jobs) > engine.max_queue:
            raise APIError(400, f"the request needs {len(jobs)} sequences; this server queues at most "
                           f"{engine.max_queue}", param="n")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        seqs = [Sequence(ids, p, partial(_deliver, loop, q, i), self.tok, engine.eos_ids, engine.device,
                         adapter=adapter) for i, (ids, p) in enumerate(jobs)]
        try:
            engine.submit(seqs)
        except QueueFullError as e:
            raise APIError(429, str(e), "rate_limit_error", "queue_full") from None
        except EngineStoppedError as e:
            raise APIError(503, str(e), "server_error", "engine_stopped") from None
        return seqs, q

    @staticmethod
    async def events(seqs: list[Sequence], q: asyncio.Queue) -> AsyncIterator[tuple[int, TokenEvent]]:
        """Every event of every sequence until all finished; leaving early cancels the rest."""
        remaining = len(seqs)
        try:
            while remaining:
                i, ev = await q.get()
                if ev.finish_reason is not None:
                    remaining -= 1
                yield i, ev
        finally:
            for s in seqs:
                if not s.finished:
                    s.cancel()

    async def collect(self, request: Request, seqs: list[Sequence], q: asyncio.Queue) -> list[list[TokenEvent]]:
        """Wait for every sequence (non-streaming); a client that disconnects cancels them."""
        watcher = asyncio.create_task(_watch_disconnect(request, seqs))
        out: list[list[TokenEvent]] = [[] for _ in seqs]
        try:
            async for i, ev in self.events(seqs, q):
                out[i].append(ev)
        finally:
            watcher.cancel()
        for evs in out:
            if evs and evs[-1].error:
                raise APIError(503, evs[-1].error, "server_error", "engine_stopped")
        return out

    # -- tokenizing -----------------------------------------------------------------------------
    def prompts(self, prompt: Any) -> list[tuple[list[int], str | None]]:
        """(ids, text or None) for each prompt of a completions request."""
        if isinstance(prompt, str):
            return [(self.tok.encode(prompt), prompt)]
        if prompt and isinstance(prompt[0], str):
            return [(self.tok.encode(p), p) for p in prompt]
        if prompt and isinstance(prompt[0], int):
            self.check_ids(prompt, "prompt")
            return [(list(prompt), None)]
        for p in prompt:
            self.check_ids(p, "prompt")
        return [(list(p), None) for p in prompt]

    def chat_ids(self, req: ChatCompletionRequest) -> list[int]:
        if req.tools and req.tool_choice != "none":
            raise APIError(400, "tool calling is not supported by this server", param="tools")
        messages = []
        for m in req.messages:
            d = m.model_dump(exclude_none=True)
            if isinstance(m.content, list):
                d["content"] = "\n".join(p.text for p in m.content)
            messages.append(d)
        try:
            return list(self.tok.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt,
                                                     tokenize=True))
        except Exception as e:  # template errors (raise_exception, bad roles) are the request's fault
            raise APIError(400, f"cannot apply the chat template: {str(e)[:300]}", param="messages") from None

    # -- logprobs formatting --------------------------------------------------------------------
    def chat_logprob(self, ev: TokenEvent) -> ChatTokenLogprob:
        text = self.token_text(ev.token_id)
        tops = [TopLogprob(token=(t := self.token_text(i)), logprob=lp, bytes=list(t.encode()))
                for i, lp in ev.top_logprobs or []]
        return ChatTokenLogprob(token=text, logprob=ev.logprob, bytes=list(text.encode()), top_logprobs=tops)

    def echo_logprobs(self, seq: Sequence, generated: CompletionLogprobs) -> CompletionLogprobs:
        """The prompt's tokens (logprobs from the engine's prefill) ahead of the generated ones."""
        lp, offset = CompletionLogprobs(), 0
        scored = [(None, [])] + list(seq.prompt_logprobs)
        for t, (value, top) in zip(seq.prompt_ids, scored):
            text = self.token_text(t)
            lp.tokens.append(text)
            lp.token_logprobs.append(value)
            lp.top_logprobs.append({self.token_text(i): v for i, v in top} if value is not None else None)
            lp.text_offset.append(offset)
            offset += len(text)
        lp.tokens += generated.tokens
        lp.token_logprobs += generated.token_logprobs
        lp.top_logprobs += generated.top_logprobs
        lp.text_offset += generated.text_offset
        return lp

    def completion_logprobs(self, evs: list[TokenEvent], offset: int) -> CompletionLogprobs:
        lp = CompletionLogprobs()
        for ev in evs:
            if ev.token_id is None:
                continue
            text = self.token_text(ev.token_id)
            lp.tokens.append(text)
            lp.token_logprobs.append(ev.logprob)
            lp.top_logprobs.append({self.token_text(i): v for i, v in ev.top_logprobs or []})
            lp.text_offset.append(offset)
            offset += len(text)
        return lp

    # -- structured output ----------------------------------------------------------------------
    async def grammar(self, kind: str, value: Any, param: str) -> Any:
        """A compiled Grammar (generation/constrained.py), cached by its text: compiling checks the
        schema / regex (a bad one is the request's fault) and runs off the event loop."""
        from ..generation.constrained import grammar_from_request

        key = (kind, json.dumps(value, sort_keys=True))
        g = self._grammars.get(key)
        if g is None:
            engine = self.require_engine(param)
            try:
                g = await run_in_threadpool(grammar_from_request, kind, value, self.tok, self.vocab_size,
                                            engine.eos_ids)
            except ValueError as e:
                raise APIError(400, str(e), param=param) from None
            self._grammars[key] = g
            while len(self._grammars) > 64:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(key)
        return g

    async def response_format(self, fmt: ResponseFormat | None) -> Any:
        """OpenAI's response_format (and TGI's {"type": "json_object", "value": schema}) -> Grammar."""
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema":
            schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
            if schema is None:
                raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
            return await self.grammar("json", schema, "response_format")
        if fmt.value is not None:
            return await self.grammar("json", fmt.value, "response_format")
        return await self.grammar("json_object", None, "response_format")

    # -- embeddings -----------------------------------------------------------------------------
    def embed(self, batch: list[list[int]], normalize: bool | None = None) -> list[list[float]]:
        """Sentence embeddings as `swisslm embed` and sentence-transformers compute them: the pooling
        (mean or CLS) and normalisation the model folder declares (modules.json), over the real
        tokens of a right-padded batch. Runs in a worker thread, one batch at a time."""
        from ..mixins.pooling import cls_pool, mean_pool

        dev = next(self.model.parameters()).device
        T = max(len(x) for x in batch)
        pad = self.model.config.pad_token_id or 0
        ids = torch.full((len(batch), T), pad, dtype=torch.long, device=dev)
        mask = torch.zeros(len(batch), T, dtype=torch.long, device=dev)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        with self._embed_lock, torch.inference_mode():
            h = self.model(ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        pool = mean_pool if self.pooling.mode == "mean" else cls_pool
        return pool(h, mask, self.pooling.normalize if normalize is None else normalize).tolist()


async def _watch_disconnect(request: Request, seqs: list[Sequence]) -> None:
    """After the body is read, the next ASGI message for this request is http.disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for s in seqs:
                s.cancel()
            return


def _sse(obj: Any) -> str:
    data = obj.model_dump_json(exclude_none=True) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- routes -------------------------------------------------------------------------------------


def _routes(app: FastAPI, srv: _Server) -> None:
    settings = srv.settings

    @app.get("/health", response_model=Health)
    async def health() -> Health | JSONResponse:
        if srv.engine is not None and not srv.engine.alive:
            return error_json(503, "the generation engine is not running", "server_error", "engine_stopped")
        return Health(model=settings.model_name)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body, ctype = srv.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        names = [settings.model_name] + (srv.engine.adapters if srv.engine is not None else [])
        return ModelList(data=[ModelCard(id=n, created=srv.created, max_model_len=srv.context_len) for n in names])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def model_card(model_id: str) -> ModelCard:
        adapter = srv.resolve_model(model_id, strict=True)
        return ModelCard(id=adapter or settings.model_name, created=srv.created, max_model_len=srv.context_len)

    @app.post("/v1/completions", response_model=CompletionResponse, responses=STREAM_RESPONSES)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        adapter = srv.resolve_model(req.model)
        srv.require_engine("/v1/completions")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", param="best_of")
        if req.echo and req.stream:
            raise APIError(400, "echo cannot be combined with stream", param="echo")
        constraint = await srv.response_format(req.response_format)
        prompts = srv.prompts(req.prompt)
        # echo with logprobs scores the prompt too (its first token has none, as OpenAI's null)
        prompt_lp = req.logprobs if req.echo and req.logprobs is not None else None
        jobs = []
        for ids, _ in prompts:
            budget = srv.budget(len(ids), req.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens")
            jobs += [(ids, srv.params(req, budget, j, req.logprobs, constraint, prompt_lp)) for j in range(req.n)]
        seqs, q = srv.start(jobs, adapter)
        rid, created, name = f"cmpl-{uuid.uuid4().hex}", _now(), adapter or settings.model_name
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        if req.stream:
            return StreamingResponse(_stream_completion(srv, req, seqs, q, rid, created, name, prompt_tokens),
                                     media_type="text/event-stream", headers=_SSE_HEADERS)
        results = await srv.collect(request, seqs, q)
        choices = []
        for i, evs in enumerate(results):
            ids, text = prompts[i // req.n]
            head = (text if text is not None else srv.tok.decode(ids)) if req.echo else ""
            body = "".join(e.text for e in evs)
            lp = None
            if req.logprobs is not None:
                lp = srv.completion_logprobs(evs, len(head))
                if prompt_lp is not None:
                    lp = srv.echo_logprobs(seqs[i], lp)
            choices.append(CompletionChoice(index=i, text=head + body, logprobs=lp,
                                            finish_reason=_finish(evs)))
        completion_tokens = sum(len(s.output_ids) for s in seqs)
        return CompletionResponse(id=rid, created=created, model=name, choices=choices,
                                  usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                              total_tokens=prompt_tokens + completion_tokens))

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=STREAM_RESPONSES)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        adapter = srv.resolve_model(req.model)
        srv.require_engine("/v1/chat/completions")
        ids = srv.chat_ids(req)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        budget = srv.budget(len(ids), requested, None, param)
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        constraint = await srv.response_format(req.response_format)
        seqs, q = srv.start([(ids, srv.params(req, budget, j, top, constraint)) for j in range(req.n)], adapter)
        rid, created, name = f"chatcmpl-{uuid.uuid4().hex}", _now(), adapter or settings.model_name
        if req.stream:
            return StreamingResponse(_stream_chat(srv, req, seqs, q, rid, created, name, len(ids)),
                                     media_type="text/event-stream", headers=_SSE_HEADERS)
        results = await srv.collect(request, seqs, q)
        choices = []
        for i, evs in enumerate(results):
            lp = None
            if req.logprobs:
                lp = ChatLogprobs(content=[srv.chat_logprob(e) for e in evs if e.token_id is not None])
            choices.append(ChatChoice(index=i, message=AssistantMessage(content="".join(e.text for e in evs)),
                                      logprobs=lp, finish_reason=_finish(evs)))
        completion_tokens = sum(len(s.output_ids) for s in seqs)
        return ChatCompletionResponse(id=rid, created=created, model=name, choices=choices,
                                      usage=Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens,
                                                  total_tokens=len(ids) + completion_tokens))

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(req: EmbeddingRequest) -> EmbeddingResponse:
        srv.resolve_model(req.model)
        if srv.engine is not None:
            raise APIError(400, f"the model '{settings.model_name}' is a generative model; /v1/embeddings needs "
                           "an encoder (e.g. all-MiniLM-L6-v2)", code="model_not_supported", param="model")
        if req.dimensions is not None:
            raise APIError(400, "dimensions is not supported (the model's width is fixed)", param="dimensions")
        inputs = srv.prompts(req.input)
        for ids, _ in inputs:
            if not ids:
                raise APIError(400, "an input is empty", param="input")
            if len(ids) > srv.context_len:
                raise APIError(400, f"an input has {len(ids)} tokens; this model takes at most {srv.context_len}",
                               code="context_length_exceeded", param="input")
        vectors: list[list[float]] = []
        batch = [ids for ids, _ in inputs]
        for start in range(0, len(batch), 64):  # bounded memory per forward
            vectors += await run_in_threadpool(srv.embed, batch[start:start + 64])
        data = []
        for i, v in enumerate(vectors):
            emb: list[float] | str = v
            if req.encoding_format == "base64":
                emb = base64.b64encode(torch.tensor(v, dtype=torch.float32).numpy().tobytes()).decode()
            data.append(EmbeddingData(index=i, embedding=emb))
        n = sum(len(b) for b in batch)
        srv.metrics.prompt_tokens.inc(n)
        return EmbeddingResponse(data=data, model=settings.model_name, usage=Usage(prompt_tokens=n, total_tokens=n))

    @app.get("/", response_model=Health, summary="TGI / HF inference API health")
    async def root_health() -> Health | JSONResponse:
        return await health()

    @app.get("/info", response_model=TGIInfo)
    async def info() -> TGIInfo:
        engine = srv.engine
        return TGIInfo(
            model_id=settings.model_name, model_sha=None, model_dtype=str(next(srv.model.parameters()).dtype),
            model_device_type=next(srv.model.parameters()).device.type,
            model_pipeline_tag="text-generation" if engine is not None else "feature-extraction",
            max_concurrent_requests=engine.max_queue if engine else 64, max_best_of=MAX_BEST_OF,
            max_stop_sequences=MAX_STOP, max_input_tokens=max(srv.context_len - 1, 1),
            max_total_tokens=srv.context_len, max_client_batch_size=MAX_HF_BATCH, version=app.version)

    @app.post("/", response_model=list[HFGeneratedText] | list[list[float]] | list[float],
              responses=TGI_STREAM_RESPONSES,
              summary="HF inference API: text-generation (causal LMs); feature-extraction and "
                      "sentence-similarity (encoders)")
    async def hf_root(req: HFGenerateRequest, request: Request) -> Any:
        if srv.engine is None:
            return await _hf_encoder(srv, req)
        p = req.parameters or HFParameters()
        if isinstance(req.inputs, SentencePair):
            raise APIError(400, "sentence-similarity needs an encoder model (e.g. all-MiniLM-L6-v2); this server "
                           "generates text", param="inputs")
        _no_encoder_fields(req)
        inputs = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        if len(inputs) > MAX_HF_BATCH:
            raise APIError(400, f"at most {MAX_HF_BATCH} inputs per request, got {len(inputs)}", param="inputs")
        if req.stream and len(inputs) > 1:
            raise APIError(400, "stream needs a single input, not a list", param="inputs")
        run = await _TGIRun.start(srv, inputs, p, req.stream)
        if req.stream:
            return run.stream()
        return JSONResponse(await run.results(request))

    @app.post("/generate", response_model=HFGeneratedText, responses=TGI_RESPONSES, summary="TGI: generate")
    async def tgi_generate(req: TGIGenerateRequest, request: Request) -> Any:
        run = await _TGIRun.start(srv, [req.inputs], req.parameters or HFParameters(), False)
        return JSONResponse((await run.results(request))[0])

    @app.post("/generate_stream", responses=TGI_STREAM_RESPONSES, summary="TGI: generate, streamed as SSE")
    async def tgi_generate_stream(req: TGIGenerateRequest, request: Request) -> Any:
        run = await _TGIRun.start(srv, [req.inputs], req.parameters or HFParameters(), True)
        return run.stream()


MAX_HF_BATCH = 64  # inputs per POST / request


def _no_encoder_fields(req: HFGenerateRequest) -> None:
    """Feature-extraction options on a text-generation request are a mistake, not something to drop."""
    given = sorted(k for k in ("normalize", "truncate", "truncation_direction", "prompt_name", "dimensions",
                               "encoding_format") if getattr(req, k) is not None)
    if given:
        raise APIError(400, f"{', '.join(given)}: feature-extraction options; this server generates text "
                       "(TGI's truncate goes in parameters)", param=given[0])


async def _hf_encoder(srv: _Server, req: HFGenerateRequest) -> JSONResponse:
    """feature-extraction (list of vectors, one per input, as TEI answers) and sentence-similarity
    (cosine of the source sentence with each sentence) on an encoder."""
    if req.stream:
        raise APIError(400, "an encoder does not stream", param="stream")
    if req.parameters is not None and req.parameters.model_fields_set:
        names = ", ".join(sorted(req.parameters.model_fields_set))
        raise APIError(400, f"parameters {names} are for text generation; this model is an encoder",
                       param="parameters")
    if req.prompt_name is not None:
        raise APIError(400, f"prompt_name '{req.prompt_name[:50]}' is not defined for this model", param="prompt_name")
    width = srv.model.config.hidden_size
    if req.dimensions is not None and req.dimensions != width:
        raise APIError(400, f"dimensions must be the model's width ({width}); truncated embeddings are not "
                       "supported", param="dimensions")
    if req.encoding_format == "base64":
        raise APIError(400, "encoding_format base64 is served on /v1/embeddings; POST / answers floats",
                       param="encoding_format")
    similarity = isinstance(req.inputs, SentencePair)
    if similarity:
        texts = [req.inputs.source_sentence, *req.inputs.sentences]
    else:
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    left = (req.truncation_direction or "right").lower() == "left"
    batch = []
    for text in texts:
        ids = srv.tok.encode(text)
        if not ids:
            raise APIError(400, "an input is empty", param="inputs")
        if len(ids) > srv.context_len:
            if not req.truncate:
                raise APIError(400, f"an input has {len(ids)} tokens; this model takes at most {srv.context_len} "
                               "(send truncate=true to cut it)", param="inputs")
            ids = ids[-srv.context_len:] if left else ids[: srv.context_len]
        batch.append(ids)
    normalize = True if similarity else req.normalize
    vectors: list[list[float]] = []
    for start in range(0, len(batch), 64):
        vectors += await run_in_threadpool(srv.embed, batch[start:start + 64], normalize)
    srv.metrics.prompt_tokens.inc(sum(len(b) for b in batch))
    if similarity:
        src = torch.tensor(vectors[0])
        return JSONResponse([float(torch.dot(src, torch.tensor(v))) for v in vectors[1:]])
    return JSONResponse(vectors)


class _TGIRun:
    """One TGI text-generation request (POST /, /generate, /generate_stream): its sequences and
    the shape of its answer (details, top_tokens, prefill, best_of_sequences)."""

    def __init__(self, srv: _Server, p: HFParameters, prompts: list[list[int]], heads: list[str],
                 seed: int | None, n: int, best_of: int) -> None:
        self.srv, self.p, self.prompts, self.heads, self.seed = srv, p, prompts, heads, seed
        self.n, self.best_of = n, best_of
        self.seqs: list[Sequence] = []
        self.q: asyncio.Queue | None = None

    @classmethod
    async def start(cls, srv: _Server, inputs: list[str], p: HFParameters, stream: bool) -> _TGIRun:
        srv.require_engine("POST /")
        if p.watermark:
            raise APIError(400, "watermark is not supported by this server (no watermarking logits processor); "
                           "send watermark=false", param="watermark")
        adapter = srv.resolve_model(p.adapter_id)  # TGI's adapter_id picks a served LoRA adapter
        if stream and p.decoder_input_details:  # TGI's rule: the stream has no place for the prefill
            raise APIError(400, "decoder_input_details is not supported when streaming tokens",
                           param="decoder_input_details")
        # TGI's rule: sample when asked to, or when a sampling knob is set; else greedy.
        do_sample = p.do_sample if p.do_sample is not None else any(
            v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
        best_of = p.best_of or 1
        n = p.num_return_sequences or 1
        if best_of > 1:
            if best_of > MAX_BEST_OF:
                raise APIError(400, f"best_of must be <= {MAX_BEST_OF}, got {best_of}", param="best_of")
            if not do_sample:
                raise APIError(400, "best_of > 1 needs sampling (do_sample=true or a sampling parameter)",
                               param="best_of")
            if p.seed is not None:
                raise APIError(400, "seed must not be set when best_of > 1 (each candidate draws its own)",
                               param="seed")
            if stream:
                raise APIError(400, "best_of > 1 is not supported when streaming tokens", param="best_of")
            if n > 1:
                raise APIError(400, "best_of and num_return_sequences cannot be combined", param="best_of")
        constraint = None
        if p.grammar is not None:
            kind = "json" if p.grammar.type == "json_object" else p.grammar.type
            if kind == "regex" and not isinstance(p.grammar.value, str):
                raise APIError(400, "a regex grammar's value must be a string", param="grammar")
            constraint = await srv.grammar(kind, p.grammar.value, "grammar")
        temperature = (p.temperature if p.temperature not in (None, 0.0) else 1.0) if do_sample else 0.0
        # A sampled request without a seed gets one, reported in details as TGI does (reproducible).
        seed = p.seed if p.seed is not None or not do_sample else random.randrange(2**63)
        want_lp = (p.top_n_tokens or 0) if (p.details or stream or best_of > 1 or p.top_n_tokens) else None
        prompt_lp = 0 if (p.decoder_input_details and p.details) else None
        prompts, heads, jobs = [], [], []
        copies = max(n, best_of)
        for text in inputs:
            ids = srv.tok.encode(text)
            if p.truncate is not None and len(ids) > p.truncate:
                ids = ids[-p.truncate:]  # TGI keeps the last `truncate` tokens
            budget = srv.budget(len(ids), p.max_new_tokens, HF_DEFAULT_MAX_NEW_TOKENS, "max_new_tokens")
            prompts.append(ids)
            heads.append(text if p.return_full_text else "")
            for j in range(copies):
                row_seed = None if seed is None else (seed + j) % 2**64
                try:
                    params = SamplingParams(
                        max_new_tokens=budget, temperature=temperature, top_k=p.top_k or 0, top_p=p.top_p or 1.0,
                        typical_p=p.typical_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
                        frequency_penalty=p.frequency_penalty or 0.0, seed=row_seed,
                        stop=list(p.stop or []) + list(p.stop_sequences or []), logprobs=want_lp,
                        prompt_logprobs=prompt_lp, constraint=constraint)
                except ValueError as e:
                    raise APIError(400, str(e), param="parameters") from None
                jobs.append((ids, params))
        run = cls(srv, p, prompts, heads, seed, n, best_of)
        run.seqs, run.q = srv.start(jobs, adapter)
        return run

    # -- answers ---------------------------------------------------------------------------------
    def token(self, token_id: int, logprob: float | None, text: str | None = None) -> dict[str, Any]:
        srv = self.srv
        return {"id": token_id, "text": srv.token_text(token_id) if text is None else text, "logprob": logprob,
                "special": token_id in srv.engine.eos_ids}

    def top_tokens(self, ev: TokenEvent) -> list[dict[str, Any]]:
        return [self.token(i, lp) for i, lp in (ev.top_logprobs or [])]

    def details(self, seq: Sequence, evs: list[TokenEvent], index: int) -> dict[str, Any]:
        toks = [e for e in evs if e.token_id is not None]
        prefill = []
        if self.p.decoder_input_details:
            ids = seq.prompt_ids
            lps = [None] + [lp for lp, _ in seq.prompt_logprobs]
            prefill = [{"id": t, "text": self.srv.token_text(t), "logprob": lp} for t, lp in zip(ids, lps)]
        out: dict[str, Any] = {
            "finish_reason": _tgi_finish(evs), "generated_tokens": len(toks),
            "seed": None if self.seed is None else (self.seed + index) % 2**64, "prefill": prefill,
            "tokens": [self.token(e.token_id, e.logprob) for e in toks]}
        if self.p.top_n_tokens:
            out["top_tokens"] = [self.top_tokens(e) for e in toks]
        return out

    async def results(self, request: Request) -> list[dict[str, Any]]:
        """One answer per input: the generated text (and details when asked for); best_of keeps
        the candidate with the highest cumulative logprob, the others go to best_of_sequences;
        num_return_sequences lists every sequence."""
        assert self.q is not None
        evs_all = await self.srv.collect(request, self.seqs, self.q)
        copies = max(self.n, self.best_of)
        out = []
        for i, head in enumerate(self.heads):
            group = list(range(i * copies, (i + 1) * copies))
            if self.best_of > 1:
                score = {k: sum(e.logprob or 0.0 for e in evs_all[k] if e.token_id is not None) for k in group}
                best = max(group, key=lambda k: score[k])
                picks = [best]
            else:
                picks = group
            for k in picks:
                evs = evs_all[k]
                item: dict[str, Any] = {"generated_text": head + "".join(e.text for e in evs)}
                if self.p.details:
                    item["details"] = self.details(self.seqs[k], evs, k - i * copies)
                    if self.best_of > 1:
                        item["details"]["best_of_sequences"] = [
                            {"generated_text": head + "".join(e.text for e in evs_all[o]),
                             **self.details(self.seqs[o], evs_all[o], o - i * copies)}
                            for o in group if o != k]
                out.append(item)
        return out

    def stream(self) -> StreamingResponse:
        return StreamingResponse(self._events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def _events(self) -> AsyncIterator[str]:
        """TGI's stream: one event per token ({index, token, top_tokens, generated_text: null,
        details: null}); the last carries generated_text and details (InferenceClient parses it)."""
        async def gen() -> AsyncIterator[str]:
            assert self.q is not None
            seen: list[list[TokenEvent]] = [[] for _ in self.seqs]
            async for i, ev in self.srv.events(self.seqs, self.q):
                if ev.error:
                    raise APIError(503, ev.error, "server_error", "engine_stopped")
                seen[i].append(ev)
                if ev.token_id is None:
                    continue
                out: dict[str, Any] = {"index": i, "token": self.token(ev.token_id, ev.logprob, ev.text),
                                       "generated_text": None, "details": None}
                if self.p.top_n_tokens:
                    out["top_tokens"] = self.top_tokens(ev)
                if ev.finish_reason is not None:
                    out["generated_text"] = self.heads[0] + "".join(e.text for e in seen[i])
                    out["details"] = {"finish_reason": _tgi_finish(seen[i]),
                                      "generated_tokens": sum(e.token_id is not None for e in seen[i]),
                                      "input_length": len(self.prompts[0]),
                                      "seed": None if self.seed is None else (self.seed + i) % 2**64}
                yield _sse(out)

        async for c in _guarded(gen(), hf=True):
            yield c


def _finish(evs: list[TokenEvent]) -> str | None:
    reason = evs[-1].finish_reason if evs else None
    return None if reason == "abort" else reason


def _tgi_finish(evs: list[TokenEvent]) -> str:
    last = evs[-1] if evs else None
    if last is not None and last.finish_reason == "stop":
        return "stop_sequence" if isinstance(last.stop_reason, str) else "eos_token"
    return "length"


async def _guarded(gen: AsyncIterator[str], hf: bool = False) -> AsyncIterator[str]:
    """Turn a failure after the headers went out into an error event instead of a cut stream
    (TGI's `{"error": str, "error_type": str}` for the HF shape, OpenAI's otherwise)."""
    try:
        async for chunk in gen:
            yield chunk
    except APIError as e:
        yield _sse({"error": e.message, "error_type": e.type} if hf else error_payload(e.message, e.type, e.code,
                                                                                      e.param))
        yield "data: [DONE]\n\n"


async def _stream_completion(srv: _Server, req: CompletionRequest, seqs: list[Sequence], q: asyncio.Queue,
                             rid: str, created: int, name: str, prompt_tokens: int) -> AsyncIterator[str]:
    async def gen() -> AsyncIterator[str]:
        offsets = [0] * len(seqs)
        async for i, ev in srv.events(seqs, q):
            if ev.error:
                raise APIError(503, ev.error, "server_error", "engine_stopped")
            if not ev.text and ev.finish_reason is None and req.logprobs is None:
                continue
            lp = None
            if req.logprobs is not None:
                lp = srv.completion_logprobs([ev], offsets[i])
                offsets[i] += sum(len(t) for t in lp.tokens)
            choice = CompletionChoice(index=i, text=ev.text, logprobs=lp, finish_reason=_finish([ev]))
            yield _sse(CompletionResponse(id=rid, created=created, model=name, choices=[choice]))
        if req.stream_options and req.stream_options.include_usage:
            done = sum(len(s.output_ids) for s in seqs)
            yield _sse(CompletionResponse(id=rid, created=created, model=name, choices=[], usage=Usage(
                prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done)))
        yield "data: [DONE]\n\n"

    async for chunk in _guarded(gen()):
        yield chunk


async def _stream_chat(srv: _Server, req: ChatCompletionRequest, seqs: list[Sequence], q: asyncio.Queue,
                       rid: str, created: int, name: str, prompt_tokens: int) -> AsyncIterator[str]:
    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> str:
        choice: dict[str, Any] = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [choice]})

    async def gen() -> AsyncIterator[str]:
        for i in range(len(seqs)):  # OpenAI sends the role first, alone
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, ev in srv.events(seqs, q):
            if ev.error:
                raise APIError(503, ev.error, "server_error", "engine_stopped")
            lp = None
            if req.logprobs and ev.token_id is not None:
                lp = {"content": [srv.chat_logprob(ev).model_dump()]}
            if ev.text or lp is not None:
                yield chunk(i, {"content": ev.text}, None, lp)
            if ev.finish_reason is not None:
                yield chunk(i, {}, _finish([ev]))
        if req.stream_options and req.stream_options.include_usage:
            done = sum(len(s.output_ids) for s in seqs)
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                        "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": done,
                                                 "total_tokens": prompt_tokens + done}})
        yield "data: [DONE]\n\n"

    async for c in _guarded(gen()):
        yield c
