"""Pixel SAC: the conv encoder shared by actor and critic, DrQ augmentation, and the policy the actor runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl_stack.agents.encoders import random_shift
from serl_stack.agents.policy import make_policy_fn
from serl_stack.agents.sac import SACAgent
from serl_stack.config import AgentConfig, Config, ReplayConfig
from serl_stack.updater import Updater

D, A, S = 4, 3, 16
CFG = AgentConfig(hidden_dims=(32, 32), batch_size=8, image_keys=("images/front",), encoder_channels=(8, 8),
                  encoder_kernels=(4, 2), encoder_strides=(4, 2), encoder_features=6, drq_pad=2)
SHAPES = {"front": (S, S, 3)}


def pixel_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def obs() -> dict:
        return {"state": rng.normal(size=(n, D)).astype(np.float32),
                "images": {"front": rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)}}

    return {"observations": obs(), "actions": rng.uniform(-1, 1, (n, A)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "next_observations": obs(),
            "masks": np.ones(n, np.float32)}


def changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_random_shift_crops_a_shifted_window_of_the_edge_padded_image() -> None:
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    out = random_shift(jax.random.PRNGKey(3), images, pad=2)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for i in range(5):  # each output is exactly one of the 25 possible crops of its own padded image
        crops = [padded[i, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(np.asarray(out[i]), c) for c in crops)
    assert random_shift(jax.random.PRNGKey(3), images, pad=0) is images


def test_critic_trains_the_encoder_and_the_actor_does_not() -> None:
    agent = SACAgent.create(0, D, A, CFG, image_shapes=SHAPES)
    batch = pixel_batch(8)
    after_critic, _ = agent.critic_step(batch)
    assert changed(agent.encoder.params, after_critic.encoder.params)
    after_actor, info = agent.actor_step(batch)
    assert changed(agent.actor.params, after_actor.actor.params)
    assert not changed(agent.encoder.params, after_actor.encoder.params)  # stop_gradient: the actor cannot move it
    updated, info = agent.update(pixel_batch(8, seed=1))
    assert np.isfinite(float(info["critic_loss"])) and changed(agent.encoder.params, updated.encoder.params)


def test_actor_process_policy_gives_the_learners_actions() -> None:
    agent, _ = SACAgent.create(0, D, A, CFG, image_shapes=SHAPES).update(pixel_batch(8))
    init_params, policy_fn = make_policy_fn(D, A, CFG, SHAPES)
    template = init_params(jax.random.PRNGKey(0))
    assert jax.tree.structure(template) == jax.tree.structure(agent.actor_params)
    obs = jax.tree.map(lambda x: x[0], pixel_batch(1, seed=5)["observations"])  # one unbatched observation
    np.testing.assert_allclose(np.asarray(policy_fn(agent.actor_params, obs, None, True)),
                               np.asarray(agent.eval_actions(obs)), rtol=1e-5, atol=1e-6)


def test_bad_pixel_batch_is_named() -> None:
    agent = SACAgent.create(0, D, A, CFG, image_shapes=SHAPES)
    batch = pixel_batch(8)
    batch["observations"]["images"]["front"] = batch["observations"]["images"]["front"][:, 0]
    with pytest.raises(ValueError, match=r"batch\['observations'\]\['images/front'\]"):
        agent.update(batch)


def test_updater_feeds_images_from_the_host_buffer() -> None:
    cfg = dataclasses.replace(Config(), agent=CFG, replay=ReplayConfig(capacity=100, on_device=True))
    rng = np.random.default_rng(0)

    def obs() -> dict:
        return {"state/x": rng.normal(size=D).astype(np.float32),
                "images/front": rng.integers(0, 256, (S, S, 3), dtype=np.uint8)}

    first = obs()
    updater = Updater(cfg, first, np.zeros(A, np.float32))
    assert not updater.on_device  # image batches come from the host buffer
    o = first
    for t in range(40):
        nxt = obs()
        updater.insert(o, rng.uniform(-1, 1, A).astype(np.float32), 0.0, nxt, False, t % 10 == 9)
        o = nxt
    assert updater.replay.stored_frames() < 2 * 40
    batch = updater.agent_batch(8)
    assert batch["observations"]["images"]["front"].dtype == np.uint8
    updater.init_agent()
    assert np.isfinite(float(updater.step()["critic_loss"]))
    with pytest.raises(KeyError, match="agent.image_keys"):
        Updater(dataclasses.replace(cfg, agent=dataclasses.replace(CFG, image_keys=("images/wrist",))), first,
                np.zeros(A, np.float32))


def test_pixel_utd_update_equals_sequential_critic_steps_then_one_actor_step() -> None:
    """Pixel agents trace their UTD critic steps one after another instead of scanning (faster on XLA:CPU);
    the result must still be the same updates applied one at a time (rtol 1e-5, atol 1e-6)."""
    k, b = 2, CFG.batch_size
    agent = SACAgent.create(1, D, A, dataclasses.replace(CFG, utd=k), image_shapes=SHAPES)
    batch = pixel_batch(k * b, seed=9)
    updated, _ = agent.update(batch)
    looped = agent
    minibatches = [jax.tree.map(lambda x, i=i: x[i * b:(i + 1) * b], batch) for i in range(k)]
    for mb in minibatches:
        looped, _ = looped.critic_step(mb)
    looped, _ = looped.actor_step(minibatches[-1])
    for x, y in zip(jax.tree.leaves(updated), jax.tree.leaves(looped), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
