"""The embedded model's data recipe: deterministic path-hash split, windows, unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtllm_nemotron.errors import ConfigError
from trtllm_nemotron.train.data import (
    DataRecipe,
    WindowSampler,
    heldout_windows,
    is_heldout,
    load_corpus,
    stdlib_files,
    stdlib_root,
    unigram_perplexity,
)


def test_split_is_deterministic_disjoint_and_excludes_tests():
    recipe = DataRecipe(max_chars=200_000)
    a, b = load_corpus(recipe), load_corpus(recipe)
    assert a.digest() == b.digest()
    train = {p for p, _ in a.train}
    held = {p for p, _ in a.heldout}
    assert held and train and not (train & held)
    assert all(is_heldout(p, recipe.heldout_percent, recipe.salt) for p in held)
    assert not any(is_heldout(p, recipe.heldout_percent, recipe.salt) for p in train)
    assert a.train_chars <= recipe.max_chars + max(len(t) for _, t in a.train)
    files = stdlib_files(stdlib_root(recipe))
    assert files == sorted(files)
    assert not any("/test/" in f"/{p}" or "site-packages" in p for p in files)


def test_split_depends_only_on_path_and_salt():
    paths = [f"pkg/mod{i}.py" for i in range(2000)]
    held = [p for p in paths if is_heldout(p, 2.0, "s")]
    assert 10 <= len(held) <= 80  # ~2% of 2000
    assert held == [p for p in reversed(paths) if is_heldout(p, 2.0, "s")][::-1]
    assert held != [p for p in paths if is_heldout(p, 2.0, "other-salt")]


def test_recipe_validation():
    with pytest.raises(ConfigError, match="heldout_percent"):
        DataRecipe(heldout_percent=0)
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(DataRecipe(stdlib="/no/such/dir"))


def test_windows_are_reproducible():
    stream = np.arange(1000, dtype=np.int32)
    a = WindowSampler(stream, 16, seed=3).batch(4)
    b = WindowSampler(stream, 16, seed=3).batch(4)
    assert a.shape == (4, 16) and a.dtype == np.int64 and np.array_equal(a, b)
    assert np.all(np.diff(a, axis=1) == 1)  # contiguous windows
    w = heldout_windows(stream, 100, max_windows=3)
    assert w.shape == (3, 100) and w[1, 0] == 100
    with pytest.raises(ConfigError, match="shorter than one window"):
        heldout_windows(stream[:10], 16)


def test_unigram_perplexity():
    uniform = np.arange(64).repeat(10)
    assert math.isclose(unigram_perplexity(uniform, uniform, 64), 64.0, rel_tol=1e-9)
    skewed = np.zeros(1000, dtype=np.int64)
    assert unigram_perplexity(skewed, skewed[:10], 64) < 1.1
