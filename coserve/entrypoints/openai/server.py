"""OpenAI-compatible HTTP server for every model in a config (FastAPI + uvicorn)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import coserve
from coserve.elastic.serving import ServedCluster
from coserve.engine.async_engine import AsyncEngine
from coserve.engine.device_config import build_device
from coserve.engine.device_engine import DeviceEngine
from coserve.engine.llm_engine import LLMEngine
from coserve.entrypoints.openai.prometheus import EngineMetrics
from coserve.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from coserve.entrypoints.openai.responses import EngineRequestError, ResponseBuilder
from coserve.entrypoints.placement_serve import build_clusters, is_placement, server_config_for
from coserve.entrypoints.serve_config import ServerConfig, load_config
from coserve.errors import ConfigError, InvalidRequestError, OutOfCapacityError, UnknownModelError
from coserve.placement.placement_file import load_placement
from coserve.yaml_config import read_yaml

logger = logging.getLogger("coserve.server")


def error_response(status: int, message: str, kind: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


def build_app(engines: dict[str, LLMEngine] | DeviceEngine, config: ServerConfig) -> FastAPI:
    """`engines`: models stepped in turn on the engine thread, or a device sharing lanes and pages."""
    metrics = EngineMetrics()
    device = engines if isinstance(engines, DeviceEngine) else None
    async_engine = AsyncEngine(engines if device is None else device.engines, config.max_waiting_requests,
                               on_step=metrics.on_step, device=device)
    default_max_tokens = {m.name: m.default_max_tokens for m in config.models}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        yield
        async_engine.stop()
        if device is not None:
            device.close()
        for engine in async_engine.engines.values():
            if isinstance(engine, ServedCluster):
                engine.close()

    app = FastAPI(title="coserve", version=coserve.__version__, lifespan=lifespan)
    app.state.engine = async_engine
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine thread serves; the body names replicas that are down ("degraded")."""
        if not async_engine.alive:
            return JSONResponse({"status": "down"}, status_code=503)
        instances, models_down = {}, []
        for name, engine in async_engine.engines.items():
            if isinstance(engine, ServedCluster):
                instances.update(engine.health())
                if not engine.cluster.live_replicas():
                    models_down.append(name)
        if models_down:  # a balancer should stop sending here
            return JSONResponse({"status": "down", "models_down": models_down, "instances": instances},
                                status_code=503)
        status = "degraded" if any(state != "ok" for state in instances.values()) else "ok"
        return JSONResponse({"status": status, "instances": instances})

    @app.get("/version")
    async def version() -> dict:
        return {"version": coserve.__version__}

    @app.get("/v1/models")
    async def models() -> dict:
        now = int(time.time())
        data = [{"id": name, "object": "model", "created": now, "owned_by": "coserve",
                 "max_model_len": engine.max_model_len} for name, engine in async_engine.engines.items()]
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.refresh_gauges(async_engine.engines)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(request, CompletionRequest, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(request, ChatCompletionRequest, chat=True)

    async def _handle(http_request: Request, schema, chat: bool) -> Response:
        try:
            body = await http_request.json()
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return error_response(400, "the request body is not valid JSON", "invalid_request_error")
        try:
            req = schema.model_validate(body)
            engine = async_engine.engine(req.model)
            # completions default to 16 tokens as OpenAI's do; chat runs to the context by default
            fallback = default_max_tokens.get(req.model) or (None if chat else 16)
            params = req.sampling_params(fallback)
            prompts = _prompts(engine, req, chat)
            if not req.max_tokens_given:  # a default the user never chose must not overflow the context
                params.max_tokens = _fit_default(params.max_tokens, engine.max_model_len, prompts)
            for prompt_ids in prompts:
                engine.check_length(len(prompt_ids), params)
            if len(prompts) * params.n > config.max_waiting_requests:
                raise InvalidRequestError(f"{len(prompts)} prompts x n={params.n} completions exceed the "
                                          f"{config.max_waiting_requests} requests a model may queue", "n")
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return error_response(400, message, "invalid_request_error", param)
        except UnknownModelError as exc:
            return error_response(404, str(exc), "invalid_request_error", "model", "model_not_found")
        except InvalidRequestError as exc:
            return error_response(400, str(exc), "invalid_request_error", exc.param)
        except TemplateError as exc:
            return error_response(400, f"the chat template rejected these messages: {exc}",
                                  "invalid_request_error", "messages")
        builder = ResponseBuilder(req.model, chat, len(prompts), params.n, req.include_usage, params.stop)
        try:
            streams = _fan_out(async_engine, req.model, prompts, params, builder.request_id)
        except OutOfCapacityError as exc:
            return error_response(429, str(exc), "rate_limit_error", code="too_many_requests")
        if req.stream:
            return StreamingResponse(_sse(builder, streams, http_request), media_type="text/event-stream")
        try:
            return JSONResponse(await _collect(builder, streams, http_request))
        except InvalidRequestError as exc:  # found by the engine (the replica a router chose)
            return error_response(400, str(exc), "invalid_request_error", exc.param)
        except OutOfCapacityError as exc:  # e.g. every replica of the model is down
            return error_response(503, str(exc), "server_error", code="service_unavailable")
        except EngineRequestError as exc:
            if not exc.unavailable:
                logger.error("request %s failed: %s", builder.request_id, exc)
                return error_response(500, f"internal error: {exc}", "server_error")
            return error_response(503, str(exc), "server_error", code="service_unavailable")
        except Exception as exc:
            logger.exception("request %s failed", builder.request_id)
            return error_response(500, f"internal error: {exc}", "server_error")

    return app


def _fit_default(max_tokens: int | None, max_model_len: int, prompts: list[list[int]]) -> int | None:
    if max_tokens is None:
        return None
    room = max_model_len - max(len(p) for p in prompts)
    return min(max_tokens, room) if room >= 1 else max_tokens  # no room: check_length names the prompt


def _prompts(engine: LLMEngine, req, chat: bool) -> list[list[int]]:
    if chat:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        # the template already placed any BOS token; adding special tokens again would double it
        return [engine.tokenize(engine.apply_chat_template(messages), add_special_tokens=False)]
    prompt = req.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", "prompt")
    return [engine.prompt_token_ids_of(p) for p in prompt]


def _fan_out(async_engine: AsyncEngine, model: str, prompts: list[list[int]], params,
             request_id: str) -> list[AsyncIterator]:
    """One engine request per (prompt, n) choice; choice index = prompt_index * n + copy."""
    async_engine.check_capacity(model, len(prompts) * params.n)
    streams = []
    try:
        for p_index, prompt_ids in enumerate(prompts):
            for copy in range(params.n):
                index = p_index * params.n + copy
                streams.append(async_engine.submit(model, prompt_ids, params.for_copy(copy), f"{request_id}-{index}"))
    except BaseException:
        for index in range(len(streams)):
            async_engine.abort(f"{request_id}-{index}")
        raise
    return streams


async def _next(stream: AsyncIterator, index: int):
    try:
        return index, await stream.__anext__()
    except StopAsyncIteration:
        return index, None


async def _merged(streams: list[AsyncIterator], http_request: Request):
    """Outputs of all choices as they come; stops (and aborts everything) if the client leaves."""
    pending = {asyncio.ensure_future(_next(s, i)): i for i, s in enumerate(streams)}
    checked = time.monotonic()
    try:
        while pending:
            done, _ = await asyncio.wait(pending, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if time.monotonic() - checked >= 1.0:  # while tokens flow too, not only when idle
                checked = time.monotonic()
                if await http_request.is_disconnected():
                    return
            for task in done:
                index = pending.pop(task)
                _, output = task.result()
                if output is None:
                    continue
                yield index, output
                if not output.finished:
                    pending[asyncio.ensure_future(_next(streams[index], index))] = index
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def _collect(builder: ResponseBuilder, streams: list[AsyncIterator], http_request: Request) -> dict:
    async for index, output in _merged(streams, http_request):
        builder.record(index, output)
    return builder.final_body()


async def _sse(builder: ResponseBuilder, streams, http_request: Request) -> AsyncIterator[str]:
    try:
        for chunk in builder.stream_start():
            yield _event(chunk)
        async for index, output in _merged(streams, http_request):
            for chunk in builder.stream_delta(index, output):
                yield _event(chunk)
        for chunk in builder.stream_end():
            yield _event(chunk)
    except InvalidRequestError as exc:  # headers are sent: report in-band, as OpenAI does
        yield _event({"error": {"message": str(exc), "type": "invalid_request_error", "param": exc.param,
                                "code": None}})
    except Exception as exc:
        logger.exception("stream %s failed", builder.request_id)
        yield _event({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
    yield "data: [DONE]\n\n"


def _event(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def load_engines(config: ServerConfig) -> dict[str, LLMEngine] | DeviceEngine:
    if config.device is not None:
        models = [deployment.colocated(config.num_threads) for deployment in config.models]
        return build_device(models, config.device.device_config())
    return {d.name: LLMEngine(d.engine_config(config.num_threads)) for d in config.models}


def serve(config_path: str | None, host: str | None = None, port: int | None = None, backend: str = "process",
          strategy: str = "drop", address: str | None = None) -> int:
    """Serve a server config, or a placement file (`coserve plan -o`) with `backend` and `strategy`."""
    import uvicorn

    if config_path is not None and is_placement(read_yaml(config_path)):
        engines = build_clusters(load_placement(config_path), backend, strategy, address)
        config = server_config_for(engines, host or "127.0.0.1", 8000 if port is None else port)
    else:
        if backend != "process":
            raise ConfigError("--backend ray needs a placement file (`coserve plan -o placement.yaml`)")
        config = load_config(config_path)
        engines = load_engines(config)
    app = build_app(engines, config)
    host = host or config.host
    port = config.port if port is None else port
    names = engines.engines if isinstance(engines, DeviceEngine) else engines
    logger.info("serving %s on http://%s:%d", ", ".join(names), host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    return 0

