"""The acting loop's per-step keys (`serl_stack.inference.KeyStream`): a pure function of the seed, distinct across
block boundaries, plain host arrays the jitted policy and the mixers' `jax.random` calls accept."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from serl_stack.inference import KeyStream


def test_keys_are_a_pure_function_of_the_seed_and_never_repeat() -> None:
    first = next(KeyStream(3, block=4))
    stream, again, other = KeyStream(3, block=4), KeyStream(3, block=4), KeyStream(4, block=4)
    keys = [next(stream) for _ in range(13)]  # crosses three block refills
    assert np.array_equal(keys[0], first)
    assert all(np.array_equal(k, next(again)) for k in keys)
    assert not np.array_equal(keys[0], next(other))
    assert len({tuple(k.tolist()) for k in keys}) == 13
    assert all(isinstance(k, np.ndarray) and k.dtype == np.uint32 and k.shape == (2,) for k in keys)


def test_the_keys_drive_jax_random_like_split_keys() -> None:
    stream = KeyStream(0, block=8)
    draws = np.array([float(jax.random.uniform(next(stream))) for _ in range(200)])
    # Independent uniform draws: mean near 1/2, all distinct.
    assert abs(draws.mean() - 0.5) < 0.1 and len(set(draws.tolist())) == 200
    k1, k2 = jax.random.split(next(stream))  # a mixer splits the step's key further
    assert not np.array_equal(np.asarray(k1), np.asarray(k2))


def test_a_block_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="block: got 0"):
        KeyStream(0, block=0)
