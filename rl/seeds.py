"""Derived seeds: every random stream of a run is a function of (run seed, iteration, task, purpose).

A stream is never drawn from another's state, so that an iteration can be rerun, resumed or
computed on another worker with the same numbers. The purposes are named by :class:`Seed`; their
values are part of every recorded result (changing one changes the runs), so they never change.

>>> derive_seed(0, 3, 1, Seed.TASK) == derive_seed(0, 3, 1, 4)
True
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["CPOSeed", "Seed", "derive_seed"]


class Seed(IntEnum):
    """The purpose of a derived seed (the last part of :func:`derive_seed`)."""

    POLICY_INIT = 1  #: the meta-policy's initial parameters
    CRITIC_INIT = 2  #: the critics' initial weights (torch's global generator)
    TRAIN_TASKS = 3  #: the training tasks of a meta-iteration
    TASK = 4  #: a training task's environment and sampling (inner and validation batches)
    CRITIC_FIT = 5  #: the minibatch shuffles of a meta-iteration's critic fit
    TEST_TASKS = 6  #: the held-out test tasks of the meta-test
    ADAPT = 7  #: a test task's adaptation at meta-test (environment, sampling, critic fits)
    ADAPT_TO_TASK = 8  #: an adaptation asked for by ``python -m rl.adapt``
    EVALUATION = 9  #: the independent evaluation batch of a test task's policy


class CPOSeed(IntEnum):
    """The purposes of ``python -m rl.cpo``'s derived streams (a scheme of their own: run seed,
    iteration, purpose)."""

    SAMPLING = 7  #: an iteration's batch (:func:`rl.cpo.sampling_generator`)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (run seed, iteration, task, purpose)."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0] >> 1)
