"""Data: built-in corpora and task sets, readers, token shards, a resumable sampler."""

from .corpora import read_corpus
from .sampler import ChunkSampler, eval_batches
from .shards import open_shards, write_shards

__all__ = ["read_corpus", "ChunkSampler", "eval_batches", "open_shards", "write_shards"]
