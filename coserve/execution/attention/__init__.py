from coserve.execution.attention.backend import AttentionBackend, get_attention_backend
from coserve.execution.attention.metadata import AttentionMetadata, PrefillChunk

__all__ = ["AttentionBackend", "AttentionMetadata", "PrefillChunk", "get_attention_backend"]
