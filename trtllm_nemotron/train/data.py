"""Training data for the embedded model: the running interpreter's standard library, split by path.

Design notes
- Every machine that runs this package has a Python standard library, so the corpus needs no download:
  the `.py` files under `sysconfig.get_paths()["stdlib"]` (source code with its docstrings and comments).
  Test suites (`test/`, `tests/`, `idle_test/`), `site-packages/` and files that are not valid UTF-8 are left
  out: the test directories hold deliberately broken files and are half the bytes.
- The file list is sorted by relative POSIX path and the train / held-out split is a hash of that path
  (sha256 of `salt + path`; held-out when the first 8 hex digits mod 10000 < `heldout_percent * 100`).
  The split of a file never depends on which other files exist, so two Python patch releases
  disagree only on the files that changed. `corpus_digest` records exactly which text was used.
- Documents are joined with the end-of-sequence token `</s>` so the model learns where a file ends.
  Training windows are drawn from the token stream at offsets from a seeded numpy generator; held-out
  windows are consecutive and non-overlapping, so evaluation is deterministic.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtllm_nemotron.errors import ConfigError

# directory names (any path component) that are left out of the corpus
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class DataRecipe:
    """What text the model is trained on. Part of the training log, so a retrain uses the same recipe."""

    heldout_percent: float = 2.0  # share of files (by path hash) kept out of training
    max_chars: int = 12_000_000  # cap on the training text (files taken in sorted order)
    salt: str = "nemotron-tiny-v1"  # changes the split without changing the file list
    stdlib: str | None = None  # root directory; None = the running interpreter's stdlib

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_percent < 50.0:
            raise ConfigError(f"heldout_percent must be in (0, 50), got {self.heldout_percent}")
        if self.max_chars <= 0:
            raise ConfigError(f"max_chars must be positive, got {self.max_chars}")


@dataclass
class Corpus:
    """The split text. `train` / `heldout` are (relative path, text) pairs in sorted path order."""

    root: str
    train: list[tuple[str, str]] = field(default_factory=list)
    heldout: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that were not valid UTF-8

    @property
    def train_chars(self) -> int:
        return sum(len(t) for _, t in self.train)

    @property
    def heldout_chars(self) -> int:
        return sum(len(t) for _, t in self.heldout)

    def digest(self) -> str:
        """sha256 over (path, text) of both splits: identical digests mean identical training data."""
        h = hashlib.sha256()
        for tag, docs in (("train", self.train), ("heldout", self.heldout)):
            for path, text in docs:
                h.update(f"{tag}\0{path}\0".encode())
                h.update(text.encode())
                h.update(b"\0")
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "root": self.root,
            "train_files": len(self.train),
            "heldout_files": len(self.heldout),
            "train_chars": self.train_chars,
            "heldout_chars": self.heldout_chars,
            "skipped_files": len(self.skipped),
            "sha256": self.digest(),
        }


def stdlib_root(recipe: DataRecipe | None = None) -> Path:
    root = (
        Path(recipe.stdlib) if recipe is not None and recipe.stdlib else Path(sysconfig.get_paths()["stdlib"])
    )
    if not root.is_dir():
        raise ConfigError(
            f"standard library directory {root} does not exist; pass DataRecipe(stdlib=...) pointing at a "
            "directory of .py files"
        )
    return root


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the corpus files under `root`, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]  # never descend into excluded trees
        rel_dir = Path(dirpath).relative_to(root)
        out.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(out)


def is_heldout(relpath: str, heldout_percent: float, salt: str) -> bool:
    """Deterministic split by path: independent of the machine, the file order and the other files."""
    h = int(hashlib.sha256(f"{salt}:{relpath}".encode()).hexdigest()[:8], 16)
    return h % 10000 < round(heldout_percent * 100)


def load_corpus(recipe: DataRecipe) -> Corpus:
    """Read the stdlib files of `recipe` and split them. Training text stops at `recipe.max_chars`."""
    root = stdlib_root(recipe)
    files = stdlib_files(root)
    if not files:
        raise ConfigError(f"no .py files under {root}; the corpus is empty")
    corpus = Corpus(root=str(root))
    used = 0
    for rel in files:
        held = is_heldout(rel, recipe.heldout_percent, recipe.salt)
        if not held and used >= recipe.max_chars:
            continue  # training text is full; held-out files are still read
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            corpus.skipped.append(rel)
            continue
        text = text.replace("\r\n", "\n")
        if not text.strip():
            continue
        if held:
            corpus.heldout.append((rel, text))
        else:
            corpus.train.append((rel, text))
            used += len(text)
    if not corpus.heldout or not corpus.train:
        raise ConfigError(
            f"split of {len(files)} files left train={len(corpus.train)}, heldout={len(corpus.heldout)} "
            f"files; raise heldout_percent ({recipe.heldout_percent}) or max_chars ({recipe.max_chars})"
        )
    return corpus


def iter_texts(docs: Sequence[tuple[str, str]]) -> Iterator[str]:
    for _, text in docs:
        yield text


def encode_documents(tokenizer, docs: Sequence[tuple[str, str]], eos_id: int) -> np.ndarray:
    """One int32 token stream: each document's ids followed by `eos_id`. `tokenizer` is a `tokenizers.Tokenizer`."""
    encs = tokenizer.encode_batch([text for _, text in docs], add_special_tokens=False)
    parts = []
    for e in encs:
        parts.append(np.asarray(e.ids, dtype=np.int32))
        parts.append(np.asarray([eos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


class WindowSampler:
    """Random training windows of `length` tokens from a token stream (seeded; same seed, same batches)."""

    def __init__(self, stream: np.ndarray, length: int, seed: int) -> None:
        if len(stream) <= length:
            raise ConfigError(f"token stream of {len(stream)} tokens is shorter than one window ({length})")
        self.stream = stream
        self.length = length
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int) -> np.ndarray:
        """[batch_size, length] int64 windows."""
        starts = self.rng.integers(0, len(self.stream) - self.length, size=batch_size)
        return np.stack([self.stream[s : s + self.length] for s in starts]).astype(np.int64)


def heldout_windows(stream: np.ndarray, length: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping [n, length] windows from the start of the held-out stream."""
    n = len(stream) // length
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ConfigError(f"held-out stream of {len(stream)} tokens is shorter than one window ({length})")
    return stream[: n * length].reshape(n, length).astype(np.int64)


def unigram_logprobs(train_stream: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(token) of an add-one smoothed unigram model of the training stream: [vocab_size] float64."""
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_perplexity(train_stream: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Perplexity of the unigram baseline on `eval_tokens` (any shape)."""
    lp = unigram_logprobs(train_stream, vocab_size)
    return float(np.exp(-lp[eval_tokens.reshape(-1)].mean()))
