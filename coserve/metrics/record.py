"""RequestRecord: what happened to one request, whoever produced it (load generator or simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """Times are seconds on one clock shared by a run (the load generator uses its start as 0)."""

    request_id: int
    model: str
    arrival_time: float  # when the workload released it
    send_time: float  # when it left the client; later than arrival when --max-concurrency holds it
    input_len: int = 0  # requested prompt length (tokens)
    output_len: int = 0  # requested max_tokens
    first_token_time: float | None = None
    end_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of every chunk carrying text
    prompt_tokens: int = 0  # from the server's usage when it reports one, else input_len
    output_tokens: int = 0  # from usage, else the number of text chunks
    success: bool = False
    error: str = ""

    @property
    def ttft(self) -> float | None:
        if not self.success or self.first_token_time is None:
            return None
        return self.first_token_time - self.send_time

    @property
    def e2e(self) -> float | None:
        if not self.success or self.end_time is None:
            return None
        return self.end_time - self.send_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; None when there is no second token."""
        ttft, e2e = self.ttft, self.e2e
        if ttft is None or e2e is None or self.output_tokens < 2:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive text chunks (a chunk may carry several tokens)."""
        if not self.success:
            return []
        return [later - earlier for earlier, later in zip(self.chunk_times, self.chunk_times[1:])]
