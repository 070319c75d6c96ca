"""Streaming sharded safetensors writer and the atomic checkpoint saver.

Design notes
- `ShardedWriter` buffers tensors up to `max_shard_bytes`, then writes one shard, so peak memory is about one
  shard whatever the checkpoint size. The shard count n is unknown while streaming, so shards are written
  under temporary names and renamed to HF's `model-0000i-of-0000n.safetensors` at `close()`, which also
  writes `model.safetensors.index.json` (`metadata.total_size`, `weight_map`). A single shard is still
  indexed, so readers have one code path.
- A tensor larger than `max_shard_bytes` gets a shard of its own (safetensors cannot split a tensor).
- `save_checkpoint` is all-or-nothing: everything goes to a temp dir beside `out_dir`, which is renamed into
  place only after the last byte is written; on any exception the temp dir is removed and `out_dir` is left
  as it was. An existing checkpoint at `out_dir` is replaced (moved aside, then deleted after the rename).
- Bytes are written as given (no dtype conversion), so reader -> writer -> reader is bit-exact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_nemotron.checkpoint.reader import INDEX_FILE
from trtllm_nemotron.errors import CheckpointError
from trtllm_nemotron.fileio import atomic_dir, stale_siblings

if TYPE_CHECKING:
    import torch

    from trtllm_nemotron.config import NemotronHConfig

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


class ShardedWriter:
    """Write named tensors into size-capped safetensors shards plus an index.

    >>> w = ShardedWriter(out_dir, max_shard_bytes=2**30)
    >>> for name, t in tensors: w.add(name, t)
    >>> index = w.close()
    """

    def __init__(
        self,
        out_dir: str | Path,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
    ):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = dict(metadata) if metadata is not None else {"format": "pt"}
        self._tag = uuid.uuid4().hex[:8]
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []  # (temp path, names) per written shard
        self._names: set[str] = set()
        self.total_size = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._closed:
            raise CheckpointError(f"ShardedWriter for {self.out_dir} is closed; cannot add {name!r}")
        if name in self._names:
            raise CheckpointError(
                f"tensor {name!r} was added twice to {self.out_dir}; each name must be unique"
            )
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        # a view into a larger storage (e.g. one expert of a fused tensor) must own its bytes for safetensors
        if t.untyped_storage().nbytes() != t.nbytes or t.storage_offset() != 0:
            t = t.clone()
        nbytes = t.nbytes
        if self._buf and self._buf_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._names.add(name)
        self._buf[name] = t
        self._buf_bytes += nbytes
        self.total_size += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._buf:
            return
        path = self.out_dir / f".shard-{self._tag}-{len(self._shards):05d}.safetensors.tmp"
        save_file(self._buf, str(path), metadata=self.metadata)
        self._shards.append((path, list(self._buf)))
        self._buf = {}
        self._buf_bytes = 0

    def close(self) -> dict[str, Any]:
        """Flush, rename shards to `model-0000i-of-0000n.safetensors`, write and return the index."""
        if self._closed:
            raise CheckpointError(f"ShardedWriter for {self.out_dir} was already closed")
        self._flush()
        self._closed = True
        if not self._shards:
            raise CheckpointError(
                f"no tensors were added to {self.out_dir}; refusing to write an empty checkpoint"
            )
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (tmp, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, self.out_dir / final)
            for name in names:
                weight_map[name] = final
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return index

    def abort(self) -> None:
        """Delete the shards written so far (used on errors)."""
        for tmp, _ in self._shards:
            tmp.unlink(missing_ok=True)
        self._shards, self._buf, self._closed = [], {}, True

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def generation_config_dict(
    config: NemotronHConfig, tokenizer_dir: str | Path | None = None
) -> dict[str, Any]:
    """generation_config.json: the config's eos ids plus the chat EOS (`<|im_end|>`) of the tokenizer."""
    eos = list(config.eos_token_ids)
    if tokenizer_dir is not None:
        for tid in _tokenizer_eos_ids(Path(tokenizer_dir)):
            if tid not in eos:
                eos.append(tid)
    out: dict[str, Any] = {"_from_model_config": False}
    if config.bos_token_id is not None:
        out["bos_token_id"] = config.bos_token_id
    if eos:
        out["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if config.pad_token_id is not None:
        out["pad_token_id"] = config.pad_token_id
    return out


def _tokenizer_eos_ids(tok_dir: Path) -> list[int]:
    cfg_path, tok_path = tok_dir / "tokenizer_config.json", tok_dir / "tokenizer.json"
    if not (cfg_path.is_file() and tok_path.is_file()):
        return []
    eos = json.loads(cfg_path.read_text()).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    for tok in json.loads(tok_path.read_text()).get("added_tokens", []):
        if tok.get("content") == eos:
            return [int(tok["id"])]
    return []


def save_checkpoint(
    out_dir: str | Path,
    config: NemotronHConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: dict[str, str] | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    progress: bool = False,
    total_bytes: int | None = None,
) -> Path:
    """Write a HF checkpoint atomically: shards + index, config.json, generation_config.json, tokenizer files.

    `extra_files` maps a file name to its contents (e.g. `hf_quant_config.json`). `progress` shows a tqdm bar on
    stderr (bytes written; with an ETA when `total_bytes` is given). Returns `out_dir`.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise CheckpointError(
            f"{out_dir} is a non-empty directory that is not a checkpoint (no config.json); refusing to replace "
            "it. Choose a new output path or empty it"
        )
    from tqdm import tqdm

    for stale in stale_siblings(out_dir):  # temp dirs of killed writers (their pid is gone)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes=max_shard_bytes, metadata=metadata)
        bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc=f"writing {out_dir.name}", disable=not progress
        )
        with writer, bar:
            for name, t in tensors:
                writer.add(name, t)
                bar.update(t.nbytes)
        config.to_json(tmp / "config.json")
        gen = generation_config_dict(config, tokenizer_dir)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer_dir is not None:
            copied = 0
            for fname in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / fname
                if src.is_file():
                    shutil.copy2(src, tmp / fname)
                    copied += 1
            if not copied:
                raise CheckpointError(
                    f"tokenizer_dir {tokenizer_dir} holds none of {list(TOKENIZER_FILES)}; "
                    "pass a directory with a HF tokenizer (tokenizer.json + tokenizer_config.json)"
                )
        for fname, content in (extra_files or {}).items():
            p = tmp / fname
            p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return out_dir
