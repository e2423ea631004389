"""Value-guided policy steering (V-GPS): a critic reranks K actions proposed by any `Policy`.

Owns: `CriticScorer`, a critic ensemble in the SAC agent's layout (`networks.CriticEnsemble` over `features`: the
observation standardized by `obs_norm` and, for a pixel agent, encoded by the `PixelEncoder`) that scores K
candidate actions at one observation in one jitted call, encoding that observation once; `critic_template` and
`critic_shapes`, the parameter pytree it restores into; `load_critic`, its parameters from a run's checkpoint; and
`ValueGuidedPolicy`, the `Policy` that draws K proposals from a base policy and executes the one the critic
picks (argmax, or a sample of softmax(Q / temperature)).

The scorer does not care how the critic was trained (SAC, Cal-QL, fine-tuned online): it takes the parameter
pytree `{"critic", "obs_norm"[, "encoder"]}` that `SACAgent.value_params` holds, and adopts newer versions of it
as a learner broadcasts them (`load`; `steering.online`). Like `inference.py`, this module
imports only the network definitions: no updater, losses, replay or optax, so the actor can steer without the
learner's machinery.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from serl_stack.agents.encoders import example_obs as example_agent_obs
from serl_stack.agents.encoders import features, make_encoder
from serl_stack.agents.networks import identity_obs_norm, make_critic
from serl_stack.config import AgentConfig
from serl_stack.data.obs import IMAGE_PREFIX, agent_obs, flatten_keys, image_keys_of, vector_dim, vector_keys
from serl_stack.errors import RunDirError

if TYPE_CHECKING:
    import flax.linen as nn

    from serl_stack.inference import Policy

REDUCTIONS = ("min", "mean")
"""How the ensemble's Q-values become one score per action: the min over `min_members` members (V-GPS: the min
of 2 critics, a pessimistic estimate), or the mean over all of them."""
CRITIC_KEYS = ("critic", "obs_norm", "encoder")
"""The subtrees of the parameter pytree a scorer reads (`encoder` only for a pixel critic)."""
_SELECT_STREAM = 1
"""`fold_in` constant of the softmax draw's key: the same step key also drew the base policy's K proposals, and the
pick must not reuse those random bits."""


def _obs_layout(example_obs: Mapping[str, Any], cfg: AgentConfig) -> tuple[tuple[str, ...], tuple[str, ...], int,
                                                                            dict[str, tuple[int, ...]] | None]:
    """(vector keys, image keys, vector size, {camera: (H, W, C)} or None) of the agent's view of an env obs."""
    flat = flatten_keys(example_obs)
    keys = vector_keys(flat, cfg.obs_keys)
    image_keys = image_keys_of(flat, cfg.image_keys)
    image_shapes = {k[len(IMAGE_PREFIX):]: tuple(np.shape(flat[k])) for k in image_keys} or None
    return keys, image_keys, vector_dim(flat, keys), image_shapes


def _critic_init(cfg: AgentConfig, example_obs: Mapping[str, Any], action_dim: int) -> Callable[[jax.Array], Any]:
    """`init(key) -> {"critic", "obs_norm"[, "encoder"]}` for `cfg`'s critic on `example_obs` and `action_dim`."""
    _, _, obs_dim, image_shapes = _obs_layout(example_obs, cfg)
    encoder = make_encoder(cfg) if image_shapes else None

    def init(key: jax.Array) -> dict[str, Any]:
        key, enc_key = jax.random.split(key)
        x = example_agent_obs(obs_dim, image_shapes)
        params: dict[str, Any] = {"obs_norm": identity_obs_norm(obs_dim)}
        if encoder is not None:
            params["encoder"] = encoder.init(enc_key, x)["params"]
        feat = features(encoder.apply if encoder is not None else None, params.get("encoder"), x, params["obs_norm"])
        params["critic"] = make_critic(cfg).init(key, feat, jnp.zeros((1, action_dim), jnp.float32))["params"]
        return params

    return init


def critic_template(cfg: AgentConfig, example_obs: Mapping[str, Any], action_dim: int, seed: int = 0) -> Any:
    """A freshly initialized `{"critic", "obs_norm"[, "encoder"]}` for `cfg`'s critic on `example_obs` (an env
    observation) and `action_dim`: the structure `SACAgent.value_params` has for these keys."""
    # Jitted: run eagerly, Flax's init dispatches (and compiles) every small op on its own.
    return jax.jit(_critic_init(cfg, example_obs, action_dim))(jax.random.PRNGKey(seed))


def critic_shapes(cfg: AgentConfig, example_obs: Mapping[str, Any], action_dim: int) -> Any:
    """`critic_template`'s structure with `jax.ShapeDtypeStruct` leaves, computed without running (or compiling)
    anything: what parameters from a checkpoint or a broadcast are checked against and restored into."""
    return jax.eval_shape(_critic_init(cfg, example_obs, action_dim), jax.random.PRNGKey(0))


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", np.shape(leaf)))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fit(template: Any, params: Any, where: str) -> Any:
    """`params`' subtrees that `template` has, restored into `template`'s structure; a ValueError names each array
    that is missing, extra or of another shape."""
    state = serialization.to_state_dict(params)
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: got a {type(params).__name__}, expected a mapping with keys {sorted(template)}")
    missing = [k for k in template if k not in state]
    if missing:
        raise ValueError(f"{where}: no {missing} in the parameters (keys {sorted(state)}); expected "
                         f"{sorted(template)}, the layout of SACAgent.value_params")
    subset = {k: state[k] for k in template}
    seen, wanted = _leaf_shapes(subset), _leaf_shapes(serialization.to_state_dict(template))
    problems = [f"{k}: got shape {seen[k]}, expected {wanted[k]}" for k in sorted(seen.keys() & wanted.keys())
                if seen[k] != wanted[k]]
    problems += [f"{k}: missing" for k in sorted(wanted.keys() - seen.keys())]
    problems += [f"{k}: not in the critic's layout" for k in sorted(seen.keys() - wanted.keys())]
    if problems:
        more = f"; ... {len(problems) - 4} more" if len(problems) > 4 else ""
        raise ValueError(f"{where} do not fit the critic of the config: " + "; ".join(problems[:4]) + more)
    return serialization.from_state_dict(template, subset)


class CriticScorer:
    """Scores K candidate actions at one env observation with a critic ensemble, in one jitted call.

    The observation is converted, standardized and (pixel critics) encoded ONCE; that one feature vector is
    broadcast against the K actions and the E critics evaluate all of them together, so K = 50 costs one image
    encoding, not 50. The ensemble's `(E, K)` Q-values are reduced to `(K,)` by `reduce`: `"min"` over the first
    `min_members` critics (0 = all; V-GPS: the min of 2) or `"mean"` over all.

    Build it with `from_params` (an agent config, the parameter pytree, an example observation); the constructor
    takes the network pieces themselves (`critic`: a `CriticEnsemble`; `encoder_apply`: the `PixelEncoder`'s
    `apply` for a pixel critic, else None).
    """

    def __init__(self, critic: nn.Module, params: Any, keys: tuple[str, ...], action_dim: int,
                 image_keys: tuple[str, ...] = (), encoder_apply: Callable[..., jax.Array] | None = None,
                 reduce: str = "min", min_members: int = 2) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce: got {reduce!r}, expected one of {list(REDUCTIONS)}")
        for name in ("critic", "obs_norm"):
            if name not in params:
                raise ValueError(f"params: no '{name}' subtree (keys {sorted(params)}); expected {list(CRITIC_KEYS)}")
        if (encoder_apply is None) != ("encoder" not in params) or bool(image_keys) != (encoder_apply is not None):
            raise ValueError(f"params/image_keys: a pixel critic needs image_keys, encoder_apply and an 'encoder' "
                             f"subtree together; got image_keys={list(image_keys)}, encoder_apply="
                             f"{'set' if encoder_apply else None}, subtrees {sorted(params)}")
        self.num_critics = int(jax.tree.leaves(params["critic"])[0].shape[0])
        """E: the ensemble size (the leading axis of every critic parameter)."""
        if isinstance(min_members, bool) or not 0 <= min_members <= self.num_critics:
            raise ValueError(f"min_members: got {min_members!r}, expected 0 (all) to {self.num_critics}, the "
                             "critic ensemble's size")
        if action_dim < 1:
            raise ValueError(f"action_dim: got {action_dim}, expected >= 1")
        self.keys, self.image_keys = tuple(keys), tuple(image_keys)
        self.action_dim = int(action_dim)
        self.reduce, self.min_members = reduce, int(min_members)
        self.params: Any = params
        self.template: Any = params
        """A pytree of the parameters' structure: what `load` restores broadcast or checkpointed ones into."""
        self.version = -1
        """The version of the parameters last adopted by `load` (-1: those it was built with)."""
        self.adopted = 0
        """How many parameter versions `load` has taken on (what an online-steered actor's summary reports)."""
        members = self.min_members or self.num_critics

        def ensemble_q(p: Any, x: Any, actions: jax.Array) -> jax.Array:
            one = jax.tree.map(lambda a: jnp.asarray(a)[None], x)
            feat = features(encoder_apply, p.get("encoder"), one, p["obs_norm"])  # (1, F): the one encoding
            acts = jnp.asarray(actions, jnp.float32)
            return critic.apply({"params": p["critic"]}, jnp.broadcast_to(feat, (acts.shape[0], feat.shape[-1])),
                                acts)

        def reduce_q(q: jax.Array) -> jax.Array:
            return q.mean(axis=0) if reduce == "mean" else q[:members].min(axis=0)

        @partial(jax.jit, static_argnames="greedy")
        def select_fn(p: Any, x: Any, actions: jax.Array, key: Any, temperature: jax.Array,
                      greedy: bool) -> tuple[jax.Array, jax.Array]:
            q = reduce_q(ensemble_q(p, x, actions))
            if greedy:
                return jnp.argmax(q), q
            return jax.random.categorical(jax.random.fold_in(key, _SELECT_STREAM), q / temperature), q

        self._q_fn = jax.jit(ensemble_q)
        self._select_fn = select_fn

    @classmethod
    def from_params(cls, cfg: AgentConfig, params: Any, example_obs: Mapping[str, Any], action_dim: int,
                    reduce: str = "min", min_members: int = 2) -> CriticScorer:
        """The critic `cfg` describes (hidden dims, ensemble size, LayerNorm, encoder) with `params`: a pytree or
        state dict holding at least `"critic"`, `"obs_norm"` and, for a pixel critic, `"encoder"` (e.g.
        `SACAgent.value_params`; other subtrees such as `"actor"` are ignored). A ValueError names every array
        whose shape does not fit."""
        keys, image_keys, _, image_shapes = _obs_layout(example_obs, cfg)
        template = critic_shapes(cfg, example_obs, action_dim)
        encoder = make_encoder(cfg) if image_shapes else None
        scorer = cls(make_critic(cfg), _fit(template, params, "critic params"), keys, action_dim, image_keys,
                     encoder.apply if encoder is not None else None, reduce, min_members)
        scorer.template = template
        return scorer

    # ------------------------------------------------------------------------------------------ parameters

    def load(self, version: int, state_dict: Any) -> bool:
        """Adopt newer parameters (a nested dict of arrays with at least the critic's subtrees, as the learner
        broadcasts `value_params`); an older or equal `version` is ignored. True if adopted."""
        if version <= self.version:
            return False
        self.params = _fit(self.template, state_dict, f"critic params version {version}")
        self.version = int(version)
        self.adopted += 1
        return True

    # ------------------------------------------------------------------------------------------ scoring

    def observe(self, obs: Mapping[str, Any]) -> Any:
        """The critic's input for one env observation (the conversion the learner applies to its batches)."""
        return agent_obs(flatten_keys(obs), self.keys, self.image_keys)

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.ndim != 2 or a.shape[1] != self.action_dim or a.shape[0] < 1:
            raise ValueError(f"actions: got shape {a.shape}, expected (K, {self.action_dim}) with K >= 1")
        return a

    def q_values(self, obs: Mapping[str, Any], actions: Any) -> np.ndarray:
        """(E, K): every critic's Q-value of each of the K `actions` at `obs`."""
        return np.asarray(self._q_fn(self.params, self.observe(obs), self._check_actions(actions)))

    def scores(self, obs: Mapping[str, Any], actions: Any) -> np.ndarray:
        """(K,): the reduced Q-values the pick is made on (what `select` returns beside the index)."""
        q = self.q_values(obs, actions)
        return q.mean(axis=0) if self.reduce == "mean" else q[: self.min_members or self.num_critics].min(axis=0)

    def select(self, obs: Mapping[str, Any], actions: Any, key: Any, temperature: float) -> tuple[int, np.ndarray]:
        """`(index, scores)`: the action the critic picks among the K `actions` at `obs`, and the K reduced
        Q-values. `temperature` 0 picks the argmax; > 0 samples index i with probability softmax(Q / temperature)_i,
        using `key` folded with a constant (so the same key may also have drawn the proposals)."""
        greedy = temperature == 0
        if not greedy and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: got {temperature!r}, expected 0 (argmax) or a finite value > 0")
        if not greedy and key is None:
            raise ValueError("key: got None, expected a JAX PRNG key (temperature > 0 samples the pick)")
        index, q = self._select_fn(self.params, self.observe(obs), self._check_actions(actions), key,
                                   np.float32(temperature if not greedy else 1.0), greedy)
        index, q = jax.device_get((index, q))
        return int(index), np.asarray(q)


def load_critic(run_dir: Path, cfg: AgentConfig, example_obs: Mapping[str, Any], action_dim: int,
                step: int | None = None, reduce: str = "min", min_members: int = 2) -> tuple[CriticScorer, int]:
    """The critic of checkpoint `step` (default: the latest) of the run in `run_dir`, and that step.

    Reads only `critic.params`, `obs_norm` and `encoder.params` of the checkpoint's `state` item (the learner's
    agent: a `SACAgent`, or any agent that names its critic, normalization and encoder the same way); optimizer
    states and the actor are not read. `RunDirError` names a missing checkpoint, `ValueError` what does not fit.
    """
    import orbax.checkpoint as ocp

    from serl_stack.checkpoint import Checkpointer, leaf_shapes
    from serl_stack.rundir import CHECKPOINTS, checkpoint_steps

    run_dir = Path(run_dir).expanduser().absolute()  # orbax reads absolute paths only
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise RunDirError(f"{run_dir}: no checkpoint in {run_dir / CHECKPOINTS}; expected a learner's run folder")
    if step is not None and step not in steps:
        raise RunDirError(f"step: got {step}, expected one of the checkpoints in {run_dir / CHECKPOINTS}: {steps}")
    step = steps[-1] if step is None else step
    template = critic_shapes(cfg, example_obs, action_dim)
    # The agent's state item keeps the critic's parameters under critic.params (a TrainState) and the encoder's
    # under encoder.params; normalization is a plain field.
    wanted: dict[str, Any] = {"critic": {"params": template["critic"]}, "obs_norm": template["obs_norm"]}
    if "encoder" in template:
        wanted["encoder"] = {"params": template["encoder"]}
    # Checked before restoring: a failed orbax restore does not say which array differs.
    checkpoints = Checkpointer(run_dir / CHECKPOINTS)
    try:
        stored = checkpoints.stored_shapes(step, "state")
    finally:
        checkpoints.close()
    problems = [f"{k}: the checkpoint has {stored.get(k, 'nothing')}, the config gives {shape}"
                for k, shape in leaf_shapes(wanted).items() if stored.get(k) != shape]
    if problems:
        more = f"; ... {len(problems) - 4} more" if len(problems) > 4 else ""
        raise ValueError(f"checkpoint {step} in {run_dir / CHECKPOINTS} does not hold the critic of the config: "
                         + "; ".join(problems[:4]) + more)
    restore_args = ocp.checkpoint_utils.construct_restore_args(wanted)
    with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(run_dir / CHECKPOINTS / str(step) / "state", args=ocp.args.PyTreeRestore(
            item=wanted, partial_restore=True, restore_args=restore_args))
    params = {"critic": restored["critic"]["params"], "obs_norm": restored["obs_norm"]}
    if "encoder" in restored:
        params["encoder"] = restored["encoder"]["params"]
    return CriticScorer.from_params(cfg, params, example_obs, action_dim, reduce, min_members), step


class ValueGuidedPolicy:
    """`base`'s K proposals reranked by `critic`: a `Policy` (V-GPS).

    Each decision draws `base.sample_actions(obs, k, key)` -> (K, H, A), scores the first action of each of the K
    chunks with the critic (one jitted call, the observation encoded once) and executes the chosen chunk step
    by step: the next H - 1 calls of `act` return its remaining actions without asking the base or the critic.
    `temperature` 0 picks the argmax; > 0 samples softmax(Q / temperature). `deterministic=True` (evaluation)
    picks the argmax whatever the temperature; the K proposals are still drawn with `key`, so V-GPS evaluated
    deterministically is the best of K samples, as in the paper. After each decision `last_index` and `last_scores`
    hold the pick and the K scores (for logging).
    """

    def __init__(self, base: Policy, critic: CriticScorer, k: int, temperature: float = 0.0) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: got {k!r}, expected an int >= 1 (proposals per decision)")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature: got {temperature!r}, expected 0 (argmax) or a finite value > 0")
        self.base, self.critic, self.k, self.temperature = base, critic, k, float(temperature)
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self.last_index = -1
        self.last_scores: np.ndarray | None = None

    @property
    def chunk(self) -> int:
        """Action-chunk length H of `sample_actions` (the base policy's)."""
        return int(getattr(self.base, "chunk", 1))

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        if self._pending:
            return self._pending.popleft()
        if key is None:
            raise ValueError("key: got None, expected a JAX PRNG key (V-GPS draws K proposals even when deterministic)")
        proposals = np.asarray(self.base.sample_actions(obs, self.k, key))
        if proposals.ndim != 3 or proposals.shape[0] != self.k or proposals.shape[1] < 1 \
                or proposals.shape[2] != self.critic.action_dim:
            raise ValueError(f"{type(self.base).__name__}.sample_actions: got shape {proposals.shape}, expected "
                             f"(k={self.k}, H >= 1, A={self.critic.action_dim})")
        index, scores = self.critic.select(obs, proposals[:, 0, :], key, 0.0 if deterministic else self.temperature)
        chosen = proposals[index]
        self._pending.extend(chosen[1:])
        self.last_index, self.last_scores = index, scores
        return chosen[0]

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        """The base policy's proposals (steering reranks them; it adds none of its own)."""
        return self.base.sample_actions(obs, k, key)

    def reset(self) -> None:
        """A new episode: the rest of the current chunk is dropped and the base policy is reset."""
        self._pending.clear()
        self.base.reset()


__all__ = ["REDUCTIONS", "CriticScorer", "ValueGuidedPolicy", "critic_shapes", "critic_template", "load_critic"]
