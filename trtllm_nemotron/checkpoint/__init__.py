"""Checkpoint I/O: lazy sharded safetensors reader, name normalisation, validation, sharded writer."""

from __future__ import annotations

from trtllm_nemotron.checkpoint.reader import CheckpointReader, normalize_name, open_checkpoint
from trtllm_nemotron.checkpoint.validate import Problem, check_checkpoint, validate
from trtllm_nemotron.checkpoint.writer import ShardedWriter, save_checkpoint

__all__ = [
    "CheckpointReader",
    "Problem",
    "ShardedWriter",
    "check_checkpoint",
    "normalize_name",
    "open_checkpoint",
    "save_checkpoint",
    "validate",
]
