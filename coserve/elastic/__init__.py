"""Elastic memory across replicas (KunServe) and the KV-centric baselines it is measured against.

Replicas of one model sit behind a router. Under a burst a replica can recompute, swap or migrate
requests' KV (vLLM, InferCept, Llumnix), or drop the layers a peer replica also holds, turn the freed
bytes into KV pages, and serve as a pipeline with that peer until the burst passes (KunServe), or
pick among these per request by predicted time (`auto`).
"""

from coserve.elastic.cluster import ElasticCluster, ElasticConfig

__all__ = ["ElasticCluster", "ElasticConfig"]
