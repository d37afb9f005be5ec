"""Ranking a step's outputs (`top_tokens`), against the whole softmax sorted."""

import numpy as np
import pytest

from rnnserve.server.sampling import softmax, top_tokens


@pytest.mark.parametrize("shape", [(1, 1, 256), (5, 3, 40), (7,)])
@pytest.mark.parametrize("k", [1, 2, 5, 9, "all"])
def test_top_tokens_are_the_softmax_s_most_probable_in_order(shape, k):
    logits = (np.random.default_rng(0).standard_normal(shape) * 4).astype(np.float32)
    k = shape[-1] if k == "all" else min(k, shape[-1])
    ids, probabilities = top_tokens(logits, k)
    expected = softmax(logits.astype(np.float64))
    order = np.argsort(-expected, axis=-1)[..., :k]
    assert ids.shape == probabilities.shape == (*shape[:-1], k)
    assert (ids == order).all()
    assert np.allclose(probabilities, np.take_along_axis(expected, order, axis=-1), rtol=1e-6, atol=0)
