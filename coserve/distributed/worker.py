"""The device side of one replica on another process or host: weights, KV layers and a job runner.

`ReplicaWorker` holds what a lane process reaches through shared memory on one machine (the model's
layers and one KV array per held layer), since a remote actor shares no memory with the controller.
It runs the same jobs as a lane and moves tensors to its peers with torch.distributed point-to-point
calls: a pipeline stage's hidden states, KV pages during exchange, migration and regather, and a
layer's weights during restore. The controller (scheduling, block tables, sampling) stays in the
driver and only sends job arrays and receives the last stage's logits.

The class knows nothing of Ray: `coserve.distributed.ray_backend` wraps it in an actor.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from coserve.elastic.layer_kv import LayerKV, layer_page_bytes
from coserve.elastic.replica import param_bytes, weights_checksum
from coserve.engine.config import EngineConfig
from coserve.engine.llm_engine import build_model, max_model_len_of
from coserve.execution.attention import get_attention_backend
from coserve.execution.lane import Job, run_job
from coserve.execution.models.llama import LlamaLayer, LlamaModel
from coserve.execution.models.spec import parse_dtype
from coserve.execution.weights import load_model

# Tags keep the three kinds of traffic between a pair of workers from matching each other's receives.
KV_TAG = 1
WEIGHTS_TAG = 2
HIDDEN_TAG_BASE = 16  # + a stage's sequence number, so a receive matches exactly its stage


def hidden_tag(seq: int) -> int:
    return HIDDEN_TAG_BASE + seq % (1 << 24)


class ReplicaWorker:
    def __init__(self, config: EngineConfig, num_pages: int, num_threads: int = 1):
        torch.set_num_threads(config.num_threads or num_threads)
        self.config = config
        self.dtype = parse_dtype(config.dtype)
        loaded = load_model(config.model, dtype=self.dtype, seed=config.seed, tokenizer=False)
        self.spec = loaded.spec
        self.model = build_model(self.spec, loaded.state_dict, max_model_len_of(config, self.spec),
                                 torch.device(config.device), self.dtype)
        self.kv_cache = LayerKV(self.spec, num_pages, config.block_size, self.dtype)
        self.attention = get_attention_backend(config.attention_backend)
        self._outbox: dict[int, torch.Tensor] = {}  # stage outputs waiting for the next member to ask
        self._sends: list[tuple[dist.Work, torch.Tensor]] = []  # isends in flight (their buffers kept alive)
        self._host: dict[int, torch.Tensor] = {}  # KV swapped out to this host's memory
        self._lock = threading.Lock()  # the outbox is filled by jobs and emptied by the transfer thread

    # -- set-up ----------------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"weight_bytes": param_bytes(self.model), "layer_bytes": param_bytes(self.model.layers[0]),
                "page_bytes_per_layer": layer_page_bytes(self.spec, self.config.block_size, self.dtype),
                "part_bytes": {part: param_bytes(self.model.part(part)) for part in self.model.held_parts()}}

    def rendezvous_address(self, host: str) -> str:
        """A free TCP port at `host` (this worker's address) for the group's rendezvous (it is rank 0)."""
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        return f"tcp://{host}:{port}"

    def join_group(self, init_method: str, rank: int, world_size: int, timeout_s: float = 120.0) -> None:
        """Join the cluster's group. `timeout_s` bounds every transfer: a receive whose sender is gone
        fails the job after it instead of holding the worker for gloo's default half hour."""
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))

    # -- execution -------------------------------------------------------------------------------

    def run(self, job: Job, seq: int, source: tuple[int, int] | None = None) -> np.ndarray | None:
        """Run stage `seq`. Its input hidden states, unless it is first, are stage `source[1]`'s output
        sent by rank `source[0]`; a stage that does not end the model keeps its output in the outbox
        under `seq` until the next member asks for it."""
        if source is not None:
            hidden = torch.empty(len(job.arrays["input_ids"]), self.spec.hidden_size, dtype=self.dtype)
            try:
                dist.recv(hidden, src=source[0], tag=hidden_tag(source[1]))
            except RuntimeError as exc:  # gloo's own text names no rank and no cause
                raise RuntimeError(f"the worker of rank {source[0]} died or is unreachable: its hidden states "
                                   f"for this stage never came ({str(exc).splitlines()[0][-80:]})") from None
            job.hidden = hidden.numpy()
        out = run_job(job, {job.model: (self.model, self.kv_cache)}, self.attention)
        if job.end is not None and job.end < self.spec.num_layers:
            with self._lock:
                self._outbox[seq] = torch.from_numpy(out)
            return None
        return out

    def send_hidden(self, seq: int, dst: int) -> None:
        """Post stage `seq`'s output to `dst` without waiting for it to be received."""
        with self._lock:
            hidden = self._outbox.pop(seq)
            self._sends = [(w, t) for w, t in self._sends if not w.is_completed()]
            self._sends.append((dist.isend(hidden, dst, tag=hidden_tag(seq)), hidden))

    # -- KV ----------------------------------------------------------------------------------------

    def send_kv(self, layers: list[int], pages: list[int], dst: int) -> None:
        dist.send(self.kv_cache.read(layers, pages), dst, tag=KV_TAG)

    def recv_kv(self, layers: list[int], pages: list[int], src: int) -> None:
        data = torch.empty(len(layers), len(pages), *self.kv_cache.page_shape, dtype=self.dtype)
        dist.recv(data, src, tag=KV_TAG)
        self.kv_cache.write(layers, pages, data)

    def swap_out(self, key: int, layers: list[int], pages: list[int]) -> int:
        data = self.kv_cache.read(layers, pages)
        self._host[key] = data
        return data.nbytes

    def swap_in(self, key: int, layers: list[int], pages: list[int]) -> None:
        self.kv_cache.write(layers, pages, self._host.pop(key))

    def drop_host_copy(self, key: int) -> None:
        self._host.pop(key, None)

    def host_copies(self) -> int:
        return len(self._host)

    # -- layers ------------------------------------------------------------------------------------

    def drop_layer(self, index: int) -> None:
        self.model.set_layer(index, None)
        self.kv_cache.drop_layer(index)

    def send_layer(self, index: int, dst: int) -> None:
        for tensor in self.model.layers[index].state_dict().values():
            dist.send(tensor.contiguous(), dst, tag=WEIGHTS_TAG)

    def recv_layer(self, index: int, src: int) -> int:
        layer = LlamaLayer(self.spec).to(self.dtype).requires_grad_(False)
        for tensor in layer.state_dict().values():
            dist.recv(tensor, src, tag=WEIGHTS_TAG)
        self._take_layer(index, layer)
        return param_bytes(layer)

    def drop_part(self, name: str) -> None:
        self.model.set_part(name, None)

    def send_part(self, name: str, dst: int) -> None:
        for tensor in self.model.part(name).state_dict().values():
            dist.send(tensor.contiguous(), dst, tag=WEIGHTS_TAG)

    def recv_part(self, name: str, src: int) -> int:
        module = self.model.new_part(name).to(self.dtype)
        for tensor in module.state_dict().values():
            dist.recv(tensor, src, tag=WEIGHTS_TAG)
        self.model.set_part(name, module)
        return param_bytes(module)

    def held_parts(self) -> list[str]:
        return sorted(self.model.held_parts())

    def reload_layers(self) -> list[int]:
        """Load every missing layer and end part from the checkpoint (a peer holding it is gone);
        returns the layers held now, so that a driver whose record missed a copy that landed here (its
        sender died after sending) learns of it."""
        with self._lock:  # outputs of stages whose next member is gone: nobody will ask for them
            self._outbox.clear()
        missing = sorted(set(range(self.spec.num_layers)) - set(self.model.held_layers()))
        for index in missing:
            self._take_layer(index, self._load_range(index, index + 1).layers[0])
        last = self.spec.num_layers
        for name in sorted(self.spec.end_parts(0, last) - self.model.held_parts()):
            start = 0 if name == "embedding" else last - 1  # the one-layer stage that holds the part
            self.model.set_part(name, self._load_range(start, start + 1).part(name))
        return self.model.held_layers()

    def _load_range(self, start: int, end: int) -> LlamaModel:
        """Layers [start, end) and the end parts that range holds, read from the checkpoint."""
        part = LlamaModel(self.spec, start, end).to(self.dtype)
        loaded = load_model(self.config.model, self.dtype, self.config.seed, (start, end), tokenizer=False)
        part.load_hf_state_dict(loaded.state_dict)
        return part

    def _take_layer(self, index: int, layer: LlamaLayer) -> None:
        self.kv_cache.add_layer(index)
        self.model.set_layer(index, layer.eval())

    def held_layers(self) -> list[int]:
        return self.model.held_layers()

    def weights_checksum(self) -> str:
        return weights_checksum(self.model)

