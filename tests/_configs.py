"""Tiny Meta-CPO configurations shared by the tests (seconds per meta-iteration)."""

from __future__ import annotations

from rl.meta_cpo import MetaCPOConfig

TINY = dict(
    env="safenav-button",  # the tests were written for its two cost channels
    iterations=2,
    meta_batch=2,
    inner_steps=1,
    batch_steps=400,
    fisher_states=2000,  # every state of these batches (the main job's default is 1000)
    num_envs=2,
    hidden=(8,),
    critic_hidden=(16,),
    critic_epochs=1,
    test_tasks=1,
    adapt_steps=0,
    adapt_batch_steps=None,  # the main job's meta-test defaults are far too large for unit tests
    adapt_confidence=None,
    eval_steps=0,
    progress=False,
    tensorboard=False,
    backend="serial",
)


def tiny_meta_config(**overrides) -> MetaCPOConfig:
    """A small, fast, serial configuration; keyword arguments override its fields."""
    return MetaCPOConfig(**{**TINY, **overrides})
