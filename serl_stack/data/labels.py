"""The labels V-GPS's critic trains on, computed from whole episodes (numpy, no JAX).

Owns: V-GPS reward labelling (`vgps_labels`: 0 and terminal on the last 3 steps of a successful episode, -1
before), Monte-Carlo returns-to-go (`mc_returns`, Cal-QL's reference value), one episode's labels
(`label_episode`) and every transition of a set of episodes with its labels (`episode_transitions`), the flat
arrays `agents.calql.train_critic` takes. The env's reward is never read or changed: these labels exist only for
the steering critic; what the mixers and the learner see is the env's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from serl_stack.data.obs import to_vector

if TYPE_CHECKING:
    from serl_stack.data.demos import Episode


def vgps_labels(
    length: int, success: bool, terminated: Any = None, num_success_steps: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The critic's `(rewards, masks)`, each `(length,)` float32, for one episode (V-GPS labelling).

    A successful episode: reward 0 and mask 0 (terminal, no bootstrap) on its last `num_success_steps` steps, -1
    before (V-GPS labels the last 3 frames of a successful trajectory as success and marks them terminal). A failed
    episode: -1 on every step. Elsewhere the mask is `1 - terminated` (the env's own terminal flags, `(length,)`;
    None = none): a failed episode cut by the time limit keeps bootstrapping from its last observation.
    """
    if length < 1:
        raise ValueError(f"length: got {length!r}, expected >= 1")
    if num_success_steps < 1:
        raise ValueError(f"num_success_steps: got {num_success_steps!r}, expected >= 1")
    term = np.zeros(length, bool) if terminated is None else np.asarray(terminated, bool)
    if term.shape != (length,):
        raise ValueError(f"terminated: got shape {term.shape}, expected ({length},)")
    rewards = np.full(length, -1.0, np.float32)
    masks = 1.0 - term.astype(np.float32)
    if success:
        k = min(num_success_steps, length)
        rewards[length - k:] = 0.0
        masks[length - k:] = 0.0
    return rewards, masks


def mc_returns(rewards: Any, masks: Any, discount: float, tail_value: float = 0.0) -> np.ndarray:
    """Discounted returns-to-go `G_t = r_t + discount * mask_t * G_{t+1}`, `(T,)` float32, with `G_T = tail_value`
    (what follows the last step; it only counts when that step bootstraps, mask 1)."""
    r, m = np.asarray(rewards, np.float64), np.asarray(masks, np.float64)
    if r.ndim != 1 or m.shape != r.shape:
        raise ValueError(f"masks: got shape {m.shape}, expected the rewards' shape {r.shape} (one dimension)")
    out = np.empty_like(r)
    g = float(tail_value)
    for t in range(r.shape[0] - 1, -1, -1):
        g = r[t] + discount * m[t] * g
        out[t] = g
    return out.astype(np.float32)


def label_episode(
    length: int, success: bool, terminated: Any, discount: float, num_success_steps: int = 3
) -> dict[str, np.ndarray]:
    """`{"rewards", "masks", "mc_returns"}` of one episode: `vgps_labels` and their returns-to-go.

    An episode that ends without a terminal (a failure cut by the time limit) gets the tail value
    -1 / (1 - discount), the return of never succeeding: Cal-QL's reference value for an all-negative sparse
    trajectory, and the TD fixed point the critic bootstraps toward there. So every step of such an episode has
    MC return -1 / (1 - discount), not a truncated sum that would depend on where the time limit fell.
    """
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"discount: got {discount!r}, expected in [0, 1) (the failure value is -1 / (1 - discount))")
    rewards, masks = vgps_labels(length, success, terminated, num_success_steps)
    tail = -1.0 / (1.0 - discount) if masks[-1] > 0 else 0.0
    return {"rewards": rewards, "masks": masks, "mc_returns": mc_returns(rewards, masks, discount, tail)}


def episode_transitions(
    episodes: Iterable[Episode], keys: tuple[str, ...], discount: float, num_success_steps: int = 3
) -> dict[str, np.ndarray]:
    """Every transition of `episodes` (demonstrations, base-policy rollouts: `data.demos.Episode`s) with the
    critic's labels, as the flat arrays `train_critic` takes. Observations are the `keys` vector
    (`data.obs.to_vector`, the order the acting side must use); the env's rewards are not used."""
    parts: list[dict[str, np.ndarray]] = []
    for episode in episodes:
        t = len(episode)
        vec = to_vector(episode.observations, keys, batch_dims=1)
        labels = label_episode(t, bool(episode.success), episode.terminated, discount, num_success_steps)
        parts.append({"observations": vec[:-1], "actions": np.asarray(episode.actions, np.float32),
                      "next_observations": vec[1:], **labels})
    if not parts:
        raise ValueError("episodes: got none, expected at least one episode")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
