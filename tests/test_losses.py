"""Tests of the pure SAC losses and the demonstration regularizer's pieces (`serl_stack.agents.losses`) against
values worked out by hand.

Every expected number is written next to its arithmetic, so a reader can check it without running anything.
`tests/test_sac.py` checks that the agent feeds these functions the right arrays (keys, subset, temperature).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from serl_stack.agents.losses import (
    Q_SCALE_FLOOR,
    actor_loss,
    critic_loss,
    kl_regularizer,
    lambda_loss,
    q_scale,
    scheduled_lambda,
    td_target,
    temperature_loss,
)


def f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------------------------------ TD target

# Four target critics (rows) on a batch of two (columns). Per column, each row is the min of a different subset:
# all four -> [2, 1] (rows 2 and 0), subset [1, 3] -> [3, 2] (rows 1 and 3).
NEXT_QS = f32([[5.0, 1.0], [3.0, 4.0], [2.0, 6.0], [4.0, 2.0]])
NO_ENTROPY = {"next_log_probs": f32([0.0, 0.0]), "temperature": 0.0}


def test_td_target_min_over_whole_ensemble():
    # r + discount * mask * min_i Q'_i = [1 + 0.5 * 2, 0.5 + 0.5 * 1] = [2.0, 1.0]
    target = td_target(f32([1.0, 0.5]), f32([1.0, 1.0]), NEXT_QS, discount=0.5, **NO_ENTROPY)
    np.testing.assert_allclose(target, [2.0, 1.0], rtol=1e-6)


def test_td_target_min_over_critic_subset_only():
    # Subset [1, 3]: min(3, 4) = 3 and min(4, 2) = 2, so [1 + 0.5 * 3, 0.5 + 0.5 * 2] = [2.5, 1.5]. Critics 0
    # and 2, outside the subset, hold the smaller values 1 and 2 and must not count.
    rewards, masks = f32([1.0, 0.5]), f32([1.0, 1.0])
    target = td_target(rewards, masks, NEXT_QS, subset_idx=jnp.array([1, 3]), discount=0.5, **NO_ENTROPY)
    np.testing.assert_allclose(target, [2.5, 1.5], rtol=1e-6)
    # The same with a traced index array (how the agent calls it inside jit).
    jitted = jax.jit(lambda idx: td_target(rewards, masks, NEXT_QS, subset_idx=idx, discount=0.5, **NO_ENTROPY))
    np.testing.assert_allclose(jitted(jnp.array([1, 3])), [2.5, 1.5], rtol=1e-6)
    # Subset [0, 2] picks the other pair: min(5, 2) = 2, min(1, 6) = 1 -> the whole-ensemble result here.
    target = td_target(rewards, masks, NEXT_QS, subset_idx=jnp.array([0, 2]), discount=0.5, **NO_ENTROPY)
    np.testing.assert_allclose(target, [2.0, 1.0], rtol=1e-6)


def test_td_target_subtracts_the_entropy_term_of_the_next_action():
    # One critic, Q' = 2 for both; temperature 0.5, log pi(a'|s') = [-1, 2], reward 0, discount 1:
    # [2 - 0.5 * (-1), 2 - 0.5 * 2] = [2.5, 1.0] (a likely next action, high log pi, earns less bonus).
    target = td_target(
        f32([0.0, 0.0]), f32([1.0, 1.0]), f32([[2.0, 2.0]]), f32([-1.0, 2.0]), temperature=0.5, discount=1.0
    )
    np.testing.assert_allclose(target, [2.5, 1.0], rtol=1e-6)


def test_td_target_terminal_mask_stops_bootstrapping_and_mask_one_bootstraps():
    # mask = 1 - terminated. Column 0 terminated (mask 0): the target is the reward alone, 1, whatever the
    # critics and the entropy term say. Column 1 (not terminated, or truncated by a time limit: mask 1)
    # bootstraps: 1 + 0.9 * (10 - 0.5 * (-2)) = 1 + 0.9 * 11 = 10.9.
    target = td_target(
        f32([1.0, 1.0]), f32([0.0, 1.0]), f32([[10.0, 10.0]]), f32([3.0, -2.0]), temperature=0.5, discount=0.9
    )
    np.testing.assert_allclose(target, [1.0, 10.9], rtol=1e-6)


# ------------------------------------------------------------------------------------------ critic loss


def test_critic_loss_is_mse_of_every_member_against_the_shared_target():
    # Two critics on two samples, target [2, 0]: errors [[1 - 2, 2 - 0], [4 - 2, 1 - 0]] = [[-1, 2], [2, 1]],
    # squares [1, 4, 4, 1], mean 10 / 4 = 2.5. Mean Q = (1 + 2 + 4 + 1) / 4 = 2; mean target = 1.
    qs, target = f32([[1.0, 2.0], [4.0, 1.0]]), f32([2.0, 0.0])
    loss, info = critic_loss(qs, target)
    assert float(loss) == 2.5
    assert set(info) == {"critic_loss", "q", "target_q"}
    assert float(info["critic_loss"]) == 2.5 and float(info["q"]) == 2.0 and float(info["target_q"]) == 1.0
    # d loss / d qs = 2 * error / 4 = error / 2; the target is a label: no gradient reaches it.
    grad_qs, grad_target = jax.grad(lambda q, t: critic_loss(q, t)[0], argnums=(0, 1))(qs, target)
    np.testing.assert_allclose(grad_qs, [[-0.5, 1.0], [1.0, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(grad_target, [0.0, 0.0])


# ------------------------------------------------------------------------------------------ actor loss


def test_actor_loss_uses_the_ensemble_mean_and_reports_entropy():
    # log pi = [-1, -2]; Q (2 critics) = [[2, 4], [4, 0]], ensemble mean [3, 2]; temperature 0.5:
    # per sample [0.5 * (-1) - 3, 0.5 * (-2) - 2] = [-3.5, -3.0], mean -3.25. (The ensemble min [2, 0] would give
    # [-2.5, -1.0] -> -1.75.) Entropy = -mean(log pi) = 1.5.
    log_probs, qs = f32([-1.0, -2.0]), f32([[2.0, 4.0], [4.0, 0.0]])
    loss, info = actor_loss(log_probs, qs, 0.5)
    assert float(loss) == -3.25
    assert set(info) == {"actor_loss", "entropy"}
    assert float(info["actor_loss"]) == -3.25 and float(info["entropy"]) == 1.5
    # d loss / d log pi = temperature / B = 0.25; d loss / d Q_i = -1 / (E * B) = -0.25: the actor is pushed
    # toward higher Q and lower log pi (more entropy).
    grad_lp, grad_qs = jax.grad(lambda lp, q: actor_loss(lp, q, 0.5)[0], argnums=(0, 1))(log_probs, qs)
    np.testing.assert_allclose(grad_lp, [0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(grad_qs, [[-0.25, -0.25], [-0.25, -0.25]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ temperature loss


def test_temperature_loss_raises_temperature_while_entropy_is_below_target():
    # Target entropy -2. Entropy -3 (below): loss 0.5 * (-3 - (-2)) = -0.5, d loss / d temperature = -1 < 0,
    # so a gradient-descent step (lr 0.1) moves the temperature from 0.5 up to 0.5 + 0.1 = 0.6.
    loss, info = temperature_loss(f32(0.5), f32(-3.0), -2.0)
    assert float(loss) == -0.5 and float(info["temperature_loss"]) == -0.5
    grad = jax.grad(lambda t: temperature_loss(t, f32(-3.0), -2.0)[0])(f32(0.5))
    assert float(grad) == -1.0
    np.testing.assert_allclose(0.5 - 0.1 * grad, 0.6, rtol=1e-6)

    # Entropy 1 (above the target): loss 0.5 * (1 - (-2)) = 1.5, gradient +3 > 0, so descent lowers it.
    loss, _ = temperature_loss(f32(0.5), f32(1.0), -2.0)
    assert float(loss) == 1.5
    assert float(jax.grad(lambda t: temperature_loss(t, f32(1.0), -2.0)[0])(f32(0.5))) == 3.0


def test_temperature_loss_holds_the_entropy_constant():
    # The entropy is a measurement of the policy, not something the temperature step may move.
    grad = jax.grad(lambda e: temperature_loss(f32(0.5), e, -2.0)[0])(f32(-3.0))
    assert float(grad) == 0.0


# ------------------------------------------------------------------------------------------ demonstration regularizer


def test_td_target_subtracts_the_value_penalty_from_the_next_state_value():
    # One critic, Q' = [2, 2], no entropy, penalty [0.5, -1], reward 1, discount 0.5, masks [1, 0]:
    # [1 + 0.5 * (2 - 0.5), 1 + 0 * (...)] = [1.75, 1.0] (a terminal step ignores the penalty like the rest of s').
    target = td_target(f32([1.0, 1.0]), f32([1.0, 0.0]), f32([[2.0, 2.0]]), f32([0.0, 0.0]), 0.0, 0.5,
                       next_penalty=f32([0.5, -1.0]))
    np.testing.assert_allclose(target, [1.75, 1.0], rtol=1e-6)


def test_q_scale_is_the_batch_mean_absolute_ensemble_mean_floored_and_constant():
    # Ensemble means [(3 + 5) / 2, (-2 + -4) / 2] = [4, -3]; mean |.| = 3.5. A critic near 0 everywhere gives the
    # floor 1.0 instead (Q_SCALE_FLOOR), so the regularizer does not vanish while the critic knows nothing.
    assert Q_SCALE_FLOOR == 1.0
    qs = f32([[3.0, -2.0], [5.0, -4.0]])
    assert float(q_scale(qs)) == 3.5
    assert float(q_scale(f32([[0.1, -0.2], [0.0, 0.3]]))) == 1.0
    np.testing.assert_array_equal(jax.grad(lambda q: q_scale(q))(qs), np.zeros((2, 2)))


def test_kl_regularizer_is_the_weighted_mean_log_ratio_with_its_pathwise_gradient():
    # log pi = [-1, 0.5], log pi_BC = [-3, 1]: log ratios [2, -0.5], mean 0.75 (the MC KL estimate; one sample can
    # be negative). lam 2, scale 3: loss 2 * 3 * 0.75 = 4.5.
    lp, prior_lp = f32([-1.0, 0.5]), f32([-3.0, 1.0])
    loss, info = kl_regularizer(lp, prior_lp, 2.0, 3.0)
    assert float(loss) == 4.5 and float(info["bc_loss"]) == 4.5 and float(info["bc_kl"]) == 0.75
    assert set(info) == {"bc_kl", "bc_loss"}
    # d loss / d log pi = lam * scale / B = 3; d / d log pi_BC = -3: lower the policy's own log-density (spread),
    # raise the prior's density of the sampled actions (move toward it). lambda and the scale are constants.
    g = jax.grad(lambda a, b, lam, s: kl_regularizer(a, b, lam, s)[0], argnums=(0, 1, 2, 3))(
        lp, prior_lp, f32(2.0), f32(3.0))
    np.testing.assert_allclose(g[0], [3.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(g[1], [-3.0, -3.0], rtol=1e-6)
    assert float(g[2]) == 0.0 and float(g[3]) == 0.0


def test_kl_regularizer_with_lambda_zero_adds_exact_zeros():
    # What plain-SAC equivalence rests on: a finite estimate times a traced 0 is a loss of 0 and gradients of 0.
    lp, prior_lp = f32([-1.0, 0.5]), f32([-3.0, 1.0])
    loss, _ = jax.jit(kl_regularizer)(lp, prior_lp, f32(0.0), f32(7.0))
    g = jax.grad(lambda a, b: kl_regularizer(a, b, f32(0.0), f32(7.0))[0], argnums=(0, 1))(lp, prior_lp)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(g[0], [0.0, 0.0])
    np.testing.assert_array_equal(g[1], [0.0, 0.0])


def test_scheduled_lambda_falls_linearly_to_zero_and_stays_there():
    # lambda_init 2 over 100 updates: step 0 -> 2, 25 -> 1.5, 50 -> 1, 100 -> 0, 250 -> 0 (never negative).
    got = [float(scheduled_lambda(jnp.asarray(s, jnp.int32), 2.0, 100)) for s in (0, 25, 50, 100, 250)]
    np.testing.assert_allclose(got, [2.0, 1.5, 1.0, 0.0, 0.0], rtol=1e-6)


def test_lambda_loss_raises_lambda_while_the_kl_is_above_its_target():
    # Target 2 nats. KL 5 (above): loss 0.5 * (2 - 5) = -1.5, d/d lambda = -3 < 0: descent raises lambda.
    loss, info = lambda_loss(f32(0.5), f32(5.0), 2.0)
    assert float(loss) == -1.5 and float(info["bc_lambda_loss"]) == -1.5
    assert float(jax.grad(lambda lam: lambda_loss(lam, f32(5.0), 2.0)[0])(f32(0.5))) == -3.0
    # KL 1 (below): gradient 2 - 1 = +1, descent lowers it; the KL is a measurement (no gradient into it).
    assert float(jax.grad(lambda lam: lambda_loss(lam, f32(1.0), 2.0)[0])(f32(0.5))) == 1.0
    assert float(jax.grad(lambda kl: lambda_loss(f32(0.5), kl, 2.0)[0])(f32(1.0))) == 0.0
