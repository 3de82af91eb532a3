"""Replicas beyond one machine: Ray actors holding a replica's weights and KV (see docs/deployment.md).

Only `traffic` is imported without Ray; `ray_backend` and `remote_replica` need the coserve[ray] extra.
"""
