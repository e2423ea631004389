"""The SAC losses as pure functions of arrays.

Owns: the TD target (`td_target`), the critic loss (`critic_loss`), the actor loss (`actor_loss`) and the
temperature loss (`temperature_loss`); Cal-QL's (`max_backup_target`, `calql_regularizer`, `calql_critic_loss`,
for agents/calql.py); and the demonstration regularizer's pieces (DESIGN.md): the Monte-Carlo
KL term toward a behaviour-cloned prior (`kl_regularizer`), TD3+BC's Q normalization (`q_scale`), the weight
lambda's linear schedule (`scheduled_lambda`) and its dual-descent loss (`lambda_loss`). Each takes the arrays the
networks produced (Q-values, log-probabilities, the temperature) and returns plain arrays, so it can be checked
against numbers worked out by hand without building an agent. `sac.py` runs the networks, draws the random
numbers and applies the gradients; nothing here knows about optimizers, train states, RNG keys or I/O.

Shapes: E = ensemble size, B = batch size. Losses return `(loss, info)` with `info` holding the scalar
diagnostics under the names the agent reports.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Info = dict[str, jax.Array]


def td_target(
    rewards: jax.Array,
    masks: jax.Array,
    next_qs: jax.Array,
    next_log_probs: jax.Array,
    temperature: jax.Array | float,
    discount: float,
    subset_idx: jax.Array | None = None,
    next_penalty: jax.Array | None = None,
) -> jax.Array:
    """The soft TD target `r + discount * mask * (min_{i in S} Q'_i(s', a') - temperature * log pi(a'|s'))`, (B,).

    `next_qs` (E, B) are the target critics' values of `a' ~ pi(.|s')`, `next_log_probs` (B,) its log-density.
    `S` is the whole ensemble when `subset_idx` is None, else the critics at `subset_idx` (RLPD's random subset:
    the min over a few critics is less pessimistic than the min over all E, which grows more negative with E).
    `masks` (B,) = 1 - terminated: a terminal step's target is its reward alone; a truncated one still
    bootstraps (mask 1), because the episode was cut, not ended. `next_penalty` (B,), when given, is subtracted
    from the next-state value too (BRAC's value penalty: lambda times the KL to the prior at s').
    """
    if subset_idx is not None:
        next_qs = next_qs[subset_idx]
    # The entropy bonus of the next action belongs to the soft value of s' (maximum-entropy backup).
    next_v = next_qs.min(axis=0) - temperature * next_log_probs
    if next_penalty is not None:
        next_v = next_v - next_penalty
    return rewards + discount * masks * next_v


def critic_loss(qs: jax.Array, target_q: jax.Array) -> tuple[jax.Array, Info]:
    """Mean squared error of every ensemble member's `qs` (E, B) against the shared `target_q` (B,).

    The target is a regression label: no gradient flows into it (it was computed from the target critics and
    the actor, which this loss must not move).
    """
    target_q = jax.lax.stop_gradient(target_q)
    loss = jnp.mean((qs - target_q[None]) ** 2)
    return loss, {"critic_loss": loss, "q": qs.mean(), "target_q": target_q.mean()}


def actor_loss(log_probs: jax.Array, qs: jax.Array, temperature: jax.Array | float) -> tuple[jax.Array, Info]:
    """`mean(temperature * log pi(a|s) - mean_i Q_i(s, a))` over the batch, for reparameterized `a ~ pi(.|s)`.

    `log_probs` (B,) and `qs` (E, B) must both depend on the actor's parameters (through `a`) for the gradient to
    be the SAC policy gradient; `temperature` is a constant here (it has its own loss).
    """
    # Mean over the ensemble (as in jaxrl/RLPD): the pessimism already lives in the critic's target.
    # Per-sample terms are summed before the batch mean, so a further term (e.g. a regularizer on log_probs)
    # is one more (B,) addend here and one more entry in the info.
    per_sample = temperature * log_probs - qs.mean(axis=0)
    loss = jnp.mean(per_sample)
    return loss, {"actor_loss": loss, "entropy": -log_probs.mean()}


def temperature_loss(
    temperature: jax.Array, entropy: jax.Array, target_entropy: float
) -> tuple[jax.Array, Info]:
    """`temperature * (entropy - target_entropy)`: its gradient w.r.t. the temperature is `entropy - target`.

    So a descent step raises the temperature while the policy's entropy is below target (more weight on the
    entropy bonus) and lowers it above. `entropy` is a measurement of the current policy, held constant.
    """
    loss = temperature * (jax.lax.stop_gradient(entropy) - target_entropy)
    return loss, {"temperature_loss": loss}


# ----------------------------------------------------------------------------------- demonstration regularizer

Q_SCALE_FLOOR = 1.0
"""`q_scale` never falls below this (reward units): a critic that still reads ~0 everywhere (sparse rewards, the
first updates) would otherwise switch the regularizer off exactly when the prior matters most."""


def q_scale(qs: jax.Array) -> jax.Array:
    """TD3+BC's normalizer, `mean_b |mean_i Q_i(s_b, a_b)|` over the batch (floored at `Q_SCALE_FLOOR`), held
    constant: the KL term is multiplied by it instead of Q being divided by it.

    `- Q + lambda * scale * KL` is `scale` times `- Q / scale + lambda * KL` (TD3+BC's form, its alpha = 1/lambda),
    so lambda weighs the KL against a unit-scale Q on every task, while the SAC part keeps its own scale: the
    temperature means what it meant, and lambda = 0 leaves SAC's loss, and its gradients, exactly as they were.
    """
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(jnp.abs(qs.mean(axis=0))), Q_SCALE_FLOOR))


def kl_regularizer(
    log_probs: jax.Array, prior_log_probs: jax.Array, lam: jax.Array | float, scale: jax.Array | float = 1.0
) -> tuple[jax.Array, Info]:
    """`lam * scale * mean(log pi(a|s) - log pi_BC(a|s))` for reparameterized `a ~ pi(.|s)`: a Monte-Carlo
    estimate of `lam * scale * KL(pi(.|s) || pi_BC(.|s))` averaged over the batch, added to `actor_loss`.

    `log_probs` and `prior_log_probs` (B,) must both depend on the actor's parameters through `a` (and
    `log_probs` also directly) for the gradient to be the KL's pathwise gradient. `lam` and `scale` are constants
    here (lambda has its own loss). Reports the estimate as `bc_kl`, the term as `bc_loss`.
    """
    kl = jnp.mean(log_probs - prior_log_probs)
    weight = jax.lax.stop_gradient(jnp.asarray(lam, kl.dtype) * scale)
    loss = weight * kl
    return loss, {"bc_kl": kl, "bc_loss": loss}


def scheduled_lambda(step: jax.Array, lambda_init: float, schedule_updates: int) -> jax.Array:
    """`lambda_init * max(0, 1 - step / schedule_updates)`: a linear fade to 0 over `schedule_updates` updates."""
    frac = jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / schedule_updates, 0.0, 1.0)
    return jnp.float32(lambda_init) * frac


def lambda_loss(lam: jax.Array, kl: jax.Array, kl_target: float) -> tuple[jax.Array, Info]:
    """`lam * (kl_target - kl)`: its gradient w.r.t. lambda is `kl_target - kl` (dual descent on KL <= target).

    So a descent step raises lambda while the measured KL is above the target (more weight on staying near the
    prior) and lowers it below. `kl` is a measurement of the current policy, held constant.
    """
    loss = lam * (kl_target - jax.lax.stop_gradient(kl))
    return loss, {"bc_lambda_loss": loss}


# ------------------------------------------------------------------------------------------------ Cal-QL

def max_backup_target(
    rewards: jax.Array,
    masks: jax.Array,
    next_qs: jax.Array,
    discount: float,
    next_log_probs: jax.Array | None = None,
    temperature: jax.Array | float = 0.0,
) -> jax.Array:
    """TD target `r + discount * mask * v(s')`, (B,), from the target critics' `next_qs` (E, B, K) of K actions at
    s': v = the best (over K) of the min over the ensemble (CQL's max backup; K = 1 is the plain backup). With
    `next_log_probs` (B, K) the chosen action's `temperature * log pi` is subtracted (SAC's entropy backup)."""
    min_q = next_qs.min(axis=0)
    best = jnp.argmax(min_q, axis=-1)[:, None]
    v = jnp.take_along_axis(min_q, best, axis=-1)[:, 0]
    if next_log_probs is not None:
        v = v - temperature * jnp.take_along_axis(next_log_probs, best, axis=-1)[:, 0]
    return rewards + discount * masks * v


def calql_regularizer(
    q_data: jax.Array,
    q_random: jax.Array,
    q_policy: jax.Array,
    policy_log_probs: jax.Array,
    action_dim: int,
    mc_returns: jax.Array | None = None,
    cql_temp: float = 1.0,
) -> tuple[jax.Array, Info]:
    """CQL's gap `cql_temp * logsumexp_j(v_j / cql_temp) - Q(s, a_data)` per critic and transition, (E, B).

    `q_data` (E, B): Q at the dataset action. `q_random` (E, B, N): Q(s, .) of N actions uniform in [-1, 1]^A.
    `q_policy` (E, B, M): Q(s, .) of M policy samples (CQL draws them at s and at s'), with `policy_log_probs`
    (B, M). Importance sampling (CQL(H)): v = Q - log(sampling density), so the logsumexp estimates
    log of the integral of exp Q over the action box whatever the samples' distribution.
    Cal-QL: with `mc_returns` (B,) the policy actions' Q is first raised to at least the MC return of the
    transition (max(Q, mc)); where that bound binds, the regularizer stops pushing those values down (the gradient
    through them is zero), so Q is not pushed below the behaviour policy's realized value.
    """
    random_log_density = -action_dim * math.log(2.0)  # uniform on [-1, 1]^A: density 2^-A
    if mc_returns is not None:
        bound = mc_returns[None, :, None]
        calibration_rate = jnp.mean(q_policy < bound)
        q_policy = jnp.maximum(q_policy, bound)
    else:
        calibration_rate = jnp.zeros(())
    v = jnp.concatenate([q_random - random_log_density, q_policy - policy_log_probs[None]], axis=-1)
    ood = cql_temp * jax.scipy.special.logsumexp(v / cql_temp, axis=-1)
    return ood - q_data, {"cql_ood": ood.mean(), "calibration_rate": calibration_rate}


def calql_critic_loss(qs: jax.Array, target_q: jax.Array, gaps: jax.Array, alpha: float) -> tuple[jax.Array, Info]:
    """`mean((Q - target)^2) + alpha * mean(gap)` over critics and batch: `qs` (E, B) at the dataset actions,
    `target_q` (B,) a label (no gradient), `gaps` (E, B) from `calql_regularizer`."""
    target_q = jax.lax.stop_gradient(target_q)
    td = jnp.mean((qs - target_q[None]) ** 2)
    gap = jnp.mean(gaps)
    loss = td + alpha * gap
    return loss, {"critic_loss": loss, "td_loss": td, "cql_gap": gap, "q": qs.mean(), "target_q": target_q.mean()}
