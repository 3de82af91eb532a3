"""Drives model engines on a background thread so an asyncio server never blocks on a step.

Models either step one after another on this thread, or, given a DeviceEngine, share a device's
lanes and page pool under its multiplexing policy.

The HTTP side validates and tokenises a request on its own thread, then posts it to the engine
thread through a command queue; every step's outputs come back to per-request asyncio queues. A
slow client only fills its own queue: the engine never waits on a socket.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from coserve.engine.device_engine import DeviceEngine
from coserve.engine.llm_engine import LLMEngine
from coserve.engine.outputs import RequestOutput
from coserve.errors import OutOfCapacityError, UnknownModelError
from coserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    """Only the newest output is kept: outputs are cumulative, so a consumer that falls behind
    skips snapshots instead of piling them up (a stalled client costs one output, not thousands)."""

    loop: asyncio.AbstractEventLoop
    latest: RequestOutput | BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self._set, item)

    def _set(self, item: RequestOutput | BaseException) -> None:
        if not isinstance(self.latest, BaseException):  # an error is never overwritten
            self.latest = item
        self.ready.set()

    async def get(self) -> RequestOutput | BaseException:
        await self.ready.wait()
        self.ready.clear()
        item, self.latest = self.latest, None
        return item


class AsyncEngine:
    def __init__(self, engines: dict[str, LLMEngine], max_waiting_requests: int = 256,
                 on_step: Callable[[str, LLMEngine, list[RequestOutput]], None] | None = None,
                 device: DeviceEngine | None = None):
        self.engines = engines if device is None else device.engines
        self.device = device
        self.max_waiting_requests = max_waiting_requests
        self.on_step = on_step
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._owner: dict[str, str] = {}  # request id -> model name
        self._pending = {name: 0 for name in engines}  # posted but not yet seen by the engine thread
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coserve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._commands.put(("wake",))
        self._thread.join(timeout=30)

    def engine(self, model: str) -> LLMEngine:
        if model not in self.engines:
            raise UnknownModelError(f"the model {model!r} does not exist; available: {sorted(self.engines)}")
        return self.engines[model]

    def num_waiting(self, model: str) -> int:
        return self.engines[model].scheduler.num_waiting + self._pending[model]

    # -- called from the event loop ------------------------------------------------------------

    def check_capacity(self, model: str, count: int = 1) -> None:
        self.engine(model)
        if self.num_waiting(model) + count > self.max_waiting_requests:
            raise OutOfCapacityError(
                f"model {model!r} has {self.max_waiting_requests} requests waiting; try again later")

    def submit(self, model: str, prompt_token_ids: list[int], params: SamplingParams,
               request_id: str) -> AsyncIterator[RequestOutput]:
        """Queue a request now; iterate the result for its outputs, step by step.

        Closing the iterator before the request finished aborts it and frees its pages.
        """
        with self._lock:
            self.check_capacity(model)
            self._pending[model] += 1
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        self._owner[request_id] = model
        arrival = self.engines[model].clock()  # on receipt, not when the engine thread gets to it
        self._commands.put(("add", model, prompt_token_ids, params, request_id, arrival))
        return self._outputs(request_id, stream)

    async def _outputs(self, request_id: str, stream: _Stream) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        model = self._owner.pop(request_id, None)
        if model is not None:
            self._commands.put(("abort", model, request_id))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._drain_commands(block=not self._busy())
                if self.device is not None:
                    if self.device.has_unfinished_requests():
                        self._step_device()
                    continue
                for name, engine in self.engines.items():
                    if engine.has_unfinished_requests():
                        self._step(name, engine)
            except Exception:  # the loop must outlive any one bad command or callback
                logger.exception("engine loop error")

    def _busy(self) -> bool:
        if self.device is not None:
            return self.device.has_unfinished_requests()
        return any(e.has_unfinished_requests() for e in self.engines.values())

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._run_command(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run_command(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, model, prompt_ids, params, request_id, arrival = command
            with self._lock:
                self._pending[model] -= 1
            if request_id not in self._streams:
                return  # aborted before it reached the engine
            try:
                self.engines[model].add_request(prompt_ids, params, request_id, arrival_time=arrival)
            except Exception as exc:  # validated already; anything here is reported, not fatal
                self._send(request_id, exc)
                self._owner.pop(request_id, None)
        elif kind == "abort":
            _, model, request_id = command
            if self.device is not None:
                self.device.abort_request(model, request_id)
            else:
                self.engines[model].abort_request(request_id)
            self._owner.pop(request_id, None)

    def _step(self, name: str, engine: LLMEngine) -> None:
        try:
            outputs = engine.step()
        except Exception as exc:
            logger.exception("engine %s failed a step", name)
            self._fail_all(engine, exc)
            outputs = []
        self._deliver(name, engine, outputs)

    def _step_device(self) -> None:
        try:
            by_model = self.device.step_by_model()
        except Exception as exc:
            logger.exception("device failed a step")
            for name, engine in self.engines.items():
                self._fail_all(engine, exc, name)
            by_model = {name: [] for name in self.engines}
        for name, engine in self.engines.items():
            self._deliver(name, engine, by_model[name])

    def _fail_all(self, engine: LLMEngine, exc: BaseException, device_model: str | None = None) -> None:
        for request_id in list(engine.states):
            if device_model is not None:  # a lane may still write these pages: the device defers
                self.device.abort_request(device_model, request_id)
            else:
                engine.abort_request(request_id)
            self._send(request_id, RuntimeError(f"engine error: {exc}"))
            self._owner.pop(request_id, None)

    def _deliver(self, name: str, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            self._send(output.request_id, output)
            if output.finished:
                self._owner.pop(output.request_id, None)
                _log_finished(name, output)
        if self.on_step is not None:
            try:
                self.on_step(name, engine, outputs)
            except Exception:
                logger.exception("step callback failed")

    def _send(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(item)


def _log_finished(model: str, output: RequestOutput) -> None:
    """One info line per request (never per token)."""
    metrics = output.metrics
    completion = output.outputs[0]
    ttft = e2e = float("nan")
    if metrics is not None and metrics.first_token_time is not None:
        ttft = metrics.first_token_time - metrics.arrival_time
        e2e = (metrics.last_token_time or metrics.first_token_time) - metrics.arrival_time
    logger.info("request %s model=%s prompt_tokens=%d output_tokens=%d finish=%s ttft=%.3fs e2e=%.3fs",
                output.request_id, model, len(output.prompt_token_ids), len(completion.token_ids),
                completion.finish_reason, ttft, e2e)
