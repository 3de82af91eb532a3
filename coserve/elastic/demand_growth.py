"""How many more pages a replica's requests are expected to need: the drop plan sizes groups for it.

A group cannot re-split until it restores, and under a burst a replica's demand (the pages its
requests hold plus those its queue needs) keeps rising after the drop that the first page-short
queue triggers: every running request adds a token per step until it ends. KunServe's planner
counts "growth headroom" in each replica's demand. Here it is what the replica's present requests
would add if each ran to the mean output length: the deployment's figure from its history when it
is given (`ElasticConfig.expected_output_tokens`), else the mean of the requests this cluster has
finished. That needs no horizon to choose. A request's `max_tokens` is not used: clients set it far
above what they get (and in the simulator it is the true length, which no server knows). A
request already past the mean adds nothing, and arrivals to come are not forecast. The learned
mean runs low early in a burst (short answers finish first), and before any request has finished
there is no estimate and no growth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coserve.engine.kv_cache_manager import cdiv


@dataclass
class OutputLengths:
    """The expected output length (tokens): the deployment's own figure from its history when it
    has one (`expected`), else the running mean of the requests finished here."""

    expected: float | None = None
    count: int = 0
    total: int = 0

    def add(self, num_tokens: int) -> None:
        self.count += 1
        self.total += num_tokens

    @property
    def mean(self) -> float | None:
        if self.expected is not None:
            return self.expected
        return self.total / self.count if self.count else None


def growth_pages(requests, block_size: int, mean_output: float | None) -> int:
    """Pages `requests` (running or queued) add by each reaching `mean_output` output tokens."""
    if mean_output is None:
        return 0
    total = 0
    for r in requests:  # demand already counts a slot for each request's next token
        more = math.ceil(mean_output) - r.num_output_tokens
        if more > 0:
            total += cdiv(r.num_tokens + more, block_size) - cdiv(r.num_tokens + 1, block_size)
    return total
