"""A compute lane on CPU: a worker process pinned to its cores that runs one job at a time.

Every lane of a device holds the same models: their weights and the device's KV pages are shared
memory, so any lane can run any model's batch and a page written by one lane is read by the next.
A job is the device half of a step (the model over a flattened batch, logits of the sampled rows);
scheduling and sampling stay in the parent, which owns the requests.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch
import torch.multiprocessing as mp

from coserve.errors import ConfigError
from coserve.execution.attention import AttentionMetadata, PrefillChunk, get_attention_backend
from coserve.execution.kv_cache import PagedKVCache
from coserve.execution.model_runner import StepInputs, forward_stage
from coserve.execution.models.llama import LlamaModel
from coserve.validation import is_count


@dataclass
class Job:
    """What crosses to the lane: arrays only, pickled by value.

    Sending torch tensors through a pipe shares each one through its own shared-memory segment
    and file descriptor, which costs far more than copying a step's few kilobytes of indices.
    """

    model: str
    arrays: dict[str, np.ndarray]
    prefills: list[tuple[int, int, int, np.ndarray]]
    block_size: int
    # a pipeline stage runs layers [start, end) only, from the previous stage's hidden states
    start: int = 0
    end: int | None = None
    hidden: np.ndarray | None = None
    # seconds the job waits before it runs: a modelled transfer (swap, migration) the step must absorb
    stall_s: float = 0.0

    @classmethod
    def from_inputs(cls, model: str, inputs: StepInputs) -> Job:
        meta = inputs.meta
        arrays = {"input_ids": inputs.input_ids, "positions": inputs.positions, "logits_rows": inputs.logits_rows,
                  "slot_mapping": meta.slot_mapping, "decode_rows": meta.decode_rows,
                  "decode_block_tables": meta.decode_block_tables, "decode_context_lens": meta.decode_context_lens}
        prefills = [(c.start, c.end, c.num_computed_tokens, c.block_table.numpy()) for c in meta.prefills]
        return cls(model, {k: v.numpy() for k, v in arrays.items()}, prefills, meta.block_size)

    def inputs(self) -> StepInputs:
        t = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        chunks = [PrefillChunk(start, end, done, torch.from_numpy(table)) for start, end, done, table in self.prefills]
        meta = AttentionMetadata(self.block_size, t["slot_mapping"], t["decode_rows"], t["decode_block_tables"],
                                 t["decode_context_lens"], chunks)
        return StepInputs(t["input_ids"], t["positions"], meta, t["logits_rows"], [])


class LaneError(RuntimeError):
    """The lane's process died (`dead`) or its job raised."""

    def __init__(self, message: str, dead: bool = False):
        super().__init__(message)
        self.dead = dead


@dataclass
class SetLayer:
    """Replace layer `index` of `model` on the lane: new weights and KV tensors (shared memory), or
    None for both to drop the layer and its KV (the lane lets go of its references)."""

    model: str
    index: int
    layer: torch.nn.Module | None
    kv: tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class SetPart:
    """Replace an end part ("embedding" or "head") of `model` on the lane, or drop it (None)."""

    model: str
    name: str
    module: torch.nn.Module | None


def run_job(job: Job, models: dict, attention) -> np.ndarray | None:
    """Run a job on the models it names: a stage's hidden states, the sampled rows' logits, or None."""
    if job.stall_s > 0:
        time.sleep(job.stall_s)
    model, kv_cache = models[job.model]
    inputs = job.inputs()
    end = model.spec.num_layers if job.end is None else job.end
    hidden = None if job.hidden is None else torch.from_numpy(job.hidden)
    out = forward_stage(model, kv_cache, attention, inputs, job.start, end, hidden)
    ends_model = end == model.spec.num_layers
    return None if ends_model and not inputs.logits_rows.numel() else out.numpy()


def _set_layer(message: SetLayer, models: dict) -> None:
    model, kv_cache = models[message.model]
    model.set_layer(message.index, message.layer)
    kv_cache.layers[message.index] = message.kv


def _serve(conn: Connection, models: dict[str, tuple[LlamaModel, PagedKVCache]], cores: list[int],
           attention_name: str) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(max(1, len(cores)))
    attention = get_attention_backend(attention_name)
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            return
        try:
            if isinstance(message, SetLayer):
                _set_layer(message, models)
                conn.send(("ok", None))
            elif isinstance(message, SetPart):
                models[message.model][0].set_part(message.name, message.module)
                conn.send(("ok", None))
            else:
                conn.send(("ok", run_job(message, models, attention)))
        except Exception as exc:  # report, keep the lane alive for the next job
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def available_cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))


class Lane:
    """`ready=False` returns once the process is started; `wait_ready()` then waits for it, so a
    device starts its lanes side by side instead of paying each one's start-up in turn."""

    def __init__(self, index: int, cores: list[int], models: dict[str, tuple[LlamaModel, PagedKVCache]],
                 attention: str = "auto", ready: bool = True):
        usable = available_cores()
        if not cores or not all(is_count(core) and core in usable for core in cores):
            raise ConfigError(f"lane {index}: cores {cores!r} are not among this process's cores {usable}")
        self.index = index
        self.cores = cores
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, models, cores, attention), daemon=True,
                                       name=f"coserve-lane-{index}")
        self.process.start()
        child.close()
        self.inputs: StepInputs | None = None  # the host-side inputs of the job in flight (to sample from)
        if ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        try:
            started = self._conn.recv() == "ready"
        except (EOFError, OSError):
            started = False
        if not started:
            self.close()
            raise LaneError(f"lane {self.index} did not start")

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def submit(self, job: Job, inputs: StepInputs | None = None) -> None:
        self.inputs = inputs
        self._conn.send(job)

    def set_layer(self, message: SetLayer | SetPart) -> None:
        """Apply a change of weights (a layer or an end part) on an idle lane and wait until it has."""
        self._conn.send(message)
        self.result()

    def result(self) -> torch.Tensor | None:
        """The finished job's logits (or a stage's hidden states); LaneError if the job failed or the
        process died."""
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            # the pipe closes as the process exits, possibly before is_alive() says so: reap it first
            self.process.join(timeout=5)
            raise LaneError(f"lane {self.index} died (exit code {self.process.exitcode})", dead=True) from exc
        if status == "error":
            raise LaneError(f"lane {self.index}: {payload}")
        return None if payload is None else torch.from_numpy(payload)

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(OSError):  # already gone: nothing to tell
                self._conn.send(None)
            self.process.join(timeout=5)
        if self.alive:
            self.process.kill()
