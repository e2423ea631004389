"""Value-guided steering and remote policies (issue 19): the critic's pick against known Q-values, softmax
frequencies against softmax(Q / beta), one observation encoding per decision, and a `Policy` served over real
ZeroMQ on loopback (bit-exact actions, clear errors when the server is down, slow, or speaks another version)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zmq
from scipy import stats

from serl_stack.agents.encoders import make_encoder
from serl_stack.agents.networks import make_critic
from serl_stack.config import AgentConfig
from serl_stack.errors import RunDirError
from serl_stack.inference import KeyStream, Policy, PolicyRunner
from serl_stack.steering.guided import CriticScorer, ValueGuidedPolicy, critic_shapes, critic_template, load_critic
from serl_stack.steering.remote import (
    SERVICE,
    PolicyServer,
    RemotePolicy,
    RemotePolicyError,
    RemotePolicyTimeout,
    serve_policy,
)
from serl_stack.transport.protocol import PROTOCOL_VERSION, open_envelope, pack

ACTION_DIM = 3
OBS = {"state": {"tcp_pose": np.array([0.4, -0.1, 0.3, 1.0, 0.0, 0.0, 0.0], np.float32),
                 "gripper_pos": np.array([0.04], np.float32)},
       "task": {"goal_pos": np.array([0.5, 0.1, 0.2], np.float32)}}
STATE_CFG = AgentConfig(hidden_dims=(4,), num_critics=3)
"""A one-hidden-layer critic whose weights the tests set by hand, so Q is a known function of the action."""

# Q_e(s, a) = W[e, 0] * (a0 + 2) + W[e, 1] * (a1 + 2) + B[e]: member 0 likes a0, member 1 likes a1, member 2
# (always the lowest) dislikes a1; min over the first 2, the mean and the min over all 3 then pick differently.
W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -0.9]], np.float32)
B = np.array([0.0, 0.1, 0.0], np.float32)


def known_q(actions: np.ndarray) -> np.ndarray:
    """(E, K) Q-values of `known_critic_params`, computed here in numpy."""
    a = np.asarray(actions, np.float64)
    return W[:, :1] * (a[None, :, 0] + 2) + W[:, 1:] * (a[None, :, 1] + 2) + B[:, None]


def random_critic_params(seed: int, cfg: AgentConfig = STATE_CFG, obs: Mapping[str, Any] = OBS) -> dict[str, Any]:
    """Gaussian parameters in the layout of `cfg`'s critic (no network is initialized: nothing compiles)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                          critic_shapes(cfg, obs, ACTION_DIM))
    params["obs_norm"]["std"] = np.ones_like(params["obs_norm"]["std"])
    return params


def known_critic_params() -> dict[str, Any]:
    """Parameters in the SAC critic's layout for which the ensemble computes `known_q`: hidden unit j is
    relu(a_j + 2) = a_j + 2 for actions in [-1, 1] (the observation's weights are zero), the output mixes them."""
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), critic_shapes(STATE_CFG, OBS, ACTION_DIM))
    params["obs_norm"]["std"][:] = 1.0
    net = params["critic"]["VmapStateActionValue_0"]
    hidden, out = net["MLP_0"]["Dense_0"], net["Dense_0"]
    obs_dim = hidden["kernel"].shape[1] - ACTION_DIM
    for j in range(2):
        hidden["kernel"][:, obs_dim + j, j] = 1.0
        hidden["bias"][:, j] = 2.0
    out["kernel"][:, :2, 0] = W
    out["bias"][:, 0] = B
    return params


class FixedProposals:
    """A base policy (the `Policy` protocol) whose K proposals are given rows, cycled in chunks of `chunk`; it
    counts its calls. Deterministic, so the critic's choice among known actions can be checked."""

    def __init__(self, rows: np.ndarray, chunk: int = 1) -> None:
        self.rows, self.chunk = np.asarray(rows, np.float32), chunk
        self.action_dim = self.rows.shape[1]
        self.sampled = self.resets = 0

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        return self.rows[0]

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        self.sampled += 1
        idx = np.arange(k)[:, None] + np.arange(self.chunk)[None, :]
        return self.rows[idx % len(self.rows)]

    def reset(self) -> None:
        self.resets += 1


class ChunkPolicy:
    """A stochastic chunked `Policy` (H = 4) drawing from a numpy generator seeded by the key, with memory: `act`
    executes its own chunk step by step; `reset` clears it."""

    chunk = 4
    action_dim = ACTION_DIM

    def __init__(self) -> None:
        self.pending: list[np.ndarray] = []
        self.resets = 0

    def _draw(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        seed = int(np.asarray(key, np.uint32).astype(np.uint64).sum()) + int(1000 * obs["task"]["goal_pos"][0])
        return np.random.default_rng(seed).uniform(-1, 1, (k, self.chunk, ACTION_DIM)).astype(np.float32)

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        if not self.pending:
            self.pending = list(self._draw(obs, 1, key)[0])
        return self.pending.pop(0)

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        return self._draw(obs, k, key)

    def reset(self) -> None:
        self.pending, self.resets = [], self.resets + 1


@functools.cache
def sac_policy() -> PolicyRunner:
    """A real SAC policy (randomly initialized) over `OBS`; one for the module (it keeps no state between calls,
    and its jitted calls compile once)."""
    runner = PolicyRunner(OBS, ACTION_DIM, AgentConfig(hidden_dims=(32, 32)))
    runner.load(0, runner.template)
    return runner


# ------------------------------------------------------------------------------------------------ the critic


def test_the_known_critic_computes_the_known_q_values() -> None:
    scorer = CriticScorer.from_params(STATE_CFG, known_critic_params(), OBS, ACTION_DIM)
    actions = np.random.default_rng(0).uniform(-1, 1, (7, ACTION_DIM)).astype(np.float32)
    np.testing.assert_allclose(scorer.q_values(OBS, actions), known_q(actions), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.scores(OBS, actions), known_q(actions)[:2].min(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("reduce", "min_members"), [("min", 2), ("mean", 2), ("min", 0)])
def test_temperature_zero_picks_the_argmax_of_the_reduced_q(reduce: str, min_members: int) -> None:
    """A real SAC base policy proposes K = 16 actions; the pick is the argmax of the ensemble reduced the
    configured way (min over the first 2, mean, or min over all 3), each computed here from the known Q."""
    base = sac_policy()
    scorer = CriticScorer.from_params(STATE_CFG, known_critic_params(), OBS, ACTION_DIM, reduce, min_members)
    steered = ValueGuidedPolicy(base, scorer, k=16, temperature=0.0)
    for seed in range(100):  # the first key whose proposals the three rules rank differently: a test that tells
        key = jax.random.PRNGKey(seed)  # them apart
        proposals = base.sample_actions(OBS, 16, key)[:, 0]
        q = known_q(proposals)
        expected = {("min", 2): q[:2].min(0), ("mean", 2): q.mean(0), ("min", 0): q.min(0)}
        picks = {rule: int(np.argmax(v)) for rule, v in expected.items()}
        if len(set(picks.values())) == 3:
            break
    assert len(set(picks.values())) == 3, picks
    action = steered.act(OBS, key)
    assert steered.last_index == picks[(reduce, min_members)]
    np.testing.assert_array_equal(action, proposals[picks[(reduce, min_members)]])
    np.testing.assert_allclose(steered.last_scores, expected[(reduce, min_members)], rtol=1e-5, atol=1e-5)
    # evaluation (deterministic) is the argmax whatever the temperature
    hot = ValueGuidedPolicy(base, scorer, k=16, temperature=5.0)
    np.testing.assert_array_equal(hot.act(OBS, key, deterministic=True), action)


def test_softmax_frequencies_match_softmax_of_q_over_beta() -> None:
    """5 fixed proposals with known Q; 6000 decisions at beta = 0.5. Tolerance: a chi-square goodness-of-fit
    test at significance 0.001 (df = 4), and every bin within 4.5 binomial standard deviations."""
    rows = np.array([[-1, -1, 0], [-0.5, 0, 0], [0, 0, 0], [0.3, 0.2, 0], [0.6, 0.4, 0]], np.float32)
    beta, draws = 0.5, 6000
    steered = ValueGuidedPolicy(FixedProposals(rows), CriticScorer.from_params(STATE_CFG, known_critic_params(), OBS,
                                                                               ACTION_DIM), k=5, temperature=beta)
    keys = KeyStream(11)
    counts = np.zeros(5, int)
    for _ in range(draws):
        steered.act(OBS, next(keys))
        counts[steered.last_index] += 1
    q = known_q(rows)[:2].min(axis=0)
    p = np.exp((q - q.max()) / beta)
    p /= p.sum()
    assert p.min() > 0.01 and p.max() < 0.7, p  # every bin is visited and none dominates: a real test of shape
    freq = counts / draws
    chi2 = float(np.sum((counts - draws * p) ** 2 / (draws * p)))
    assert chi2 < stats.chi2.ppf(0.999, df=4), (chi2, freq, p)
    assert np.all(np.abs(freq - p) < 4.5 * np.sqrt(p * (1 - p) / draws)), (freq, p)


def test_a_pixel_observation_is_encoded_once_per_decision() -> None:
    """The encoder's apply is wrapped with a run-time counter of the images it encodes (a `jax.debug.callback`
    runs at every execution, once per element under vmap): K = 32 proposals must cost ONE image encoding per
    decision, and a chunk of 3 one decision per 3 steps."""
    images = {"wrist": np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)}
    obs = {**OBS, "images": images}
    cfg = AgentConfig(hidden_dims=(8,), num_critics=2, image_keys=("images/wrist",), encoder_channels=(4,),
                      encoder_kernels=(4,), encoder_strides=(4,), encoder_features=8)
    params = random_critic_params(0, cfg, obs)
    encoder = make_encoder(cfg)
    assert encoder is not None
    encoded: list[int] = []

    def count(images: np.ndarray) -> None:
        encoded.append(int(np.prod(np.shape(images)[:-3])))

    def counting_apply(variables: Any, x: Any) -> jax.Array:
        jax.debug.callback(count, x["images"]["wrist"])
        return encoder.apply(variables, x)

    # The instrument itself: an encoder vmapped over K observations is counted K times.
    jax.jit(jax.vmap(lambda s: counting_apply({"params": params["encoder"]}, s)))(
        {"state": jnp.zeros((5, 1, 11)), "images": {"wrist": jnp.zeros((5, 1, 16, 16, 3), jnp.uint8)}})
    assert sum(encoded) == 5
    encoded.clear()

    scorer = CriticScorer(make_critic(cfg), params, ("state/gripper_pos", "state/tcp_pose", "task/goal_pos"),
                          ACTION_DIM, ("images/wrist",), counting_apply)
    rows = np.random.default_rng(1).uniform(-1, 1, (32, ACTION_DIM)).astype(np.float32)
    base = FixedProposals(rows, chunk=3)
    steered = ValueGuidedPolicy(base, scorer, k=32, temperature=0.5)
    keys = KeyStream(0)
    for _ in range(6):
        steered.act(obs, next(keys))
    assert base.sampled == 2 and encoded == [1, 1]
    # the scores are those of the same critic evaluated action by action (nothing lost by broadcasting)
    reference = CriticScorer.from_params(cfg, params, obs, ACTION_DIM)
    single = [reference.scores(obs, rows[i:i + 1])[0] for i in (0, 7, 31)]
    np.testing.assert_allclose(scorer.scores(obs, rows)[[0, 7, 31]], single, rtol=1e-5, atol=1e-5)


def test_a_chunk_is_chosen_by_its_first_action_and_executed_step_by_step() -> None:
    rows = np.array([[-1, -1, 0], [0.9, 0.9, 0], [0, 0, 0]], np.float32)
    base = FixedProposals(rows, chunk=3)  # proposal i is rows[i], rows[i+1], rows[i+2] (cyclic)
    steered = ValueGuidedPolicy(base, CriticScorer.from_params(STATE_CFG, known_critic_params(), OBS, ACTION_DIM),
                                k=3)
    assert steered.chunk == 3
    key = jax.random.PRNGKey(0)
    executed = [steered.act(OBS, key) for _ in range(3)]
    assert steered.last_index == 1 and base.sampled == 1  # rows[1] is the best first action
    np.testing.assert_array_equal(np.stack(executed), rows[[1, 2, 0]])
    steered.act(OBS, key)
    assert base.sampled == 2
    steered.reset()  # the rest of that chunk is dropped
    assert base.resets == 1
    steered.act(OBS, key)
    assert base.sampled == 3


def test_bad_settings_and_shapes_name_the_field() -> None:
    params = known_critic_params()
    with pytest.raises(ValueError, match=r"min_members: got 4, expected 0 \(all\) to 3"):
        CriticScorer.from_params(STATE_CFG, params, OBS, ACTION_DIM, min_members=4)
    with pytest.raises(ValueError, match="reduce: got 'max'"):
        CriticScorer.from_params(STATE_CFG, params, OBS, ACTION_DIM, reduce="max")
    wide = AgentConfig(hidden_dims=(8,), num_critics=3)
    with pytest.raises(ValueError, match=r"MLP_0.*got shape \(3, 14, 4\), expected \(3, 14, 8\)"):
        CriticScorer.from_params(wide, params, OBS, ACTION_DIM)
    with pytest.raises(ValueError, match=r"no \['critic'\]"):
        CriticScorer.from_params(STATE_CFG, {"obs_norm": params["obs_norm"]}, OBS, ACTION_DIM)
    scorer = CriticScorer.from_params(STATE_CFG, params, OBS, ACTION_DIM)
    with pytest.raises(ValueError, match="k: got 0"):
        ValueGuidedPolicy(FixedProposals(np.zeros((2, ACTION_DIM))), scorer, k=0)
    with pytest.raises(ValueError, match="temperature: got -1"):
        ValueGuidedPolicy(FixedProposals(np.zeros((2, ACTION_DIM))), scorer, k=2, temperature=-1.0)
    two_dim = ValueGuidedPolicy(FixedProposals(np.zeros((2, 2))), scorer, k=2)
    with pytest.raises(ValueError, match=r"FixedProposals.sample_actions: got shape \(2, 1, 2\), expected "
                                         r"\(k=2, H >= 1, A=3\)"):
        two_dim.act(OBS, jax.random.PRNGKey(0))


def test_the_template_is_the_layout_that_the_scorer_takes() -> None:
    template = critic_template(STATE_CFG, OBS, ACTION_DIM, seed=0)
    shapes = critic_shapes(STATE_CFG, OBS, ACTION_DIM)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), template) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
    assert sorted(template) == ["critic", "obs_norm"]
    assert jax.tree.leaves(template["critic"])[0].shape[0] == STATE_CFG.num_critics
    actions = np.eye(ACTION_DIM, dtype=np.float32)
    q = CriticScorer.from_params(STATE_CFG, template, OBS, ACTION_DIM).q_values(OBS, actions)
    assert q.shape == (3, ACTION_DIM) and np.all(np.isfinite(q)) and not np.allclose(q[0], q[1])  # independent members


def test_the_scorer_adopts_newer_broadcast_parameters_only() -> None:
    scorer = CriticScorer.from_params(STATE_CFG, random_critic_params(1), OBS, ACTION_DIM)
    actions = np.eye(ACTION_DIM, dtype=np.float32)
    assert scorer.load(2, {**known_critic_params(), "actor": {"ignored": np.zeros(1)}})
    np.testing.assert_allclose(scorer.q_values(OBS, actions), known_q(actions), rtol=1e-5, atol=1e-5)
    assert not scorer.load(1, random_critic_params(2))
    np.testing.assert_allclose(scorer.q_values(OBS, actions), known_q(actions), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_critic_loads_from_a_learner_checkpoint(tmp_path: Path) -> None:
    """A SAC learner's checkpoint (the agent as the learner saves it): `load_critic` reads the critic, the
    normalization and nothing else, and scores like the agent's own critic. Slow: `SACAgent.create` alone takes
    5-9 s on a loaded 2-core CPU."""
    from serl_stack.agents.networks import normalize_obs
    from serl_stack.agents.sac import SACAgent
    from serl_stack.checkpoint import Checkpointer
    from serl_stack.data.obs import agent_obs, flatten_keys, vector_keys
    from serl_stack.rundir import CHECKPOINTS

    cfg = AgentConfig(hidden_dims=(16, 16), num_critics=2)
    norm = {"mean": np.linspace(-1, 1, 11, dtype=np.float32), "std": np.full(11, 0.5, np.float32)}
    agent = SACAgent.create(0, 11, ACTION_DIM, cfg, obs_norm=norm)
    checkpoints = Checkpointer(tmp_path / CHECKPOINTS)
    checkpoints.save(5, agent, {"updates": 5}, policy=agent.actor_params)
    checkpoints.close()
    scorer, step = load_critic(tmp_path, cfg, OBS, ACTION_DIM)
    assert step == 5
    actions = np.random.default_rng(0).uniform(-1, 1, (6, ACTION_DIM)).astype(np.float32)
    flat = flatten_keys(OBS)
    x = agent_obs(flat, vector_keys(flat))
    features = np.repeat(np.asarray(normalize_obs(x, agent.obs_norm))[None], 6, axis=0)
    expected = agent.critic.apply_fn({"params": agent.critic.params}, features, actions)
    np.testing.assert_allclose(scorer.q_values(OBS, actions), np.asarray(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(RunDirError, match=r"step: got 4, expected one of the checkpoints in .*: \[5\]"):
        load_critic(tmp_path, cfg, OBS, ACTION_DIM, step=4)
    with pytest.raises(ValueError, match="does not hold the critic of the config"):
        load_critic(tmp_path, AgentConfig(hidden_dims=(8,), num_critics=2), OBS, ACTION_DIM)


# ------------------------------------------------------------------------------------------------ remote


class SlowOnce:
    """Wraps a policy; its next `act` after `arm()` sleeps `delay` seconds first, then sets `done`."""

    def __init__(self, policy: Policy, delay: float) -> None:
        self.policy, self.delay = policy, delay
        self.action_dim = ACTION_DIM
        self.armed, self.done = False, threading.Event()

    def arm(self) -> None:
        self.armed = True
        self.done.clear()

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        if self.armed:
            self.armed = False
            time.sleep(self.delay)
            action = self.policy.act(obs, key, deterministic)
            self.done.set()
            return action
        return self.policy.act(obs, key, deterministic)

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        return self.policy.sample_actions(obs, k, key)

    def reset(self) -> None:
        self.policy.reset()


class Served:
    """A `PolicyServer` answering on loopback from a thread, for the duration of a test."""

    def __init__(self, policy: Any, **kwargs: Any) -> None:
        self.policy, self.stop = policy, threading.Event()
        self.server = PolicyServer(policy, "tcp://127.0.0.1:*", **kwargs)
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop, 20), daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.server.close()


@pytest.fixture
def served_sac() -> Iterator[Served]:
    served = Served(SlowOnce(sac_policy(), delay=0.6))
    yield served
    served.close()


def test_remote_actions_are_bit_exact(served_sac: Served) -> None:
    local = served_sac.policy.policy
    with RemotePolicy(served_sac.endpoint, timeout_s=5.0) as remote:
        assert (remote.action_dim, remote.chunk, remote.info["service"]) == (ACTION_DIM, 1, SERVICE)
        assert remote.normalization.startswith("identity")
        keys = KeyStream(4)
        for i in range(5):
            obs = {**OBS, "task": {"goal_pos": OBS["task"]["goal_pos"] + np.float32(0.01 * i)}}
            key = next(keys)
            for deterministic in (False, True):
                got, want = remote.act(obs, key, deterministic), local.act(obs, key, deterministic)
                assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
            got, want = remote.sample_actions(obs, 8, key), local.sample_actions(obs, 8, key)
            assert got.shape == (8, 1, ACTION_DIM) and got.dtype == want.dtype and got.tobytes() == want.tobytes()
        jax_key = jax.random.PRNGKey(9)  # a JAX key array travels as its uint32 words
        assert remote.act(OBS, jax_key).tobytes() == local.act(OBS, jax_key).tobytes()
        typed_key = jax.random.key(9)
        assert remote.act(OBS, typed_key).tobytes() == local.act(OBS, jax_key).tobytes()


def test_a_chunked_remote_policy_is_steered_and_reset() -> None:
    served = Served(ChunkPolicy())
    try:
        with RemotePolicy(served.endpoint, timeout_s=5.0) as remote:
            assert remote.chunk == 4
            key = np.array([1, 2], np.uint32)
            np.testing.assert_array_equal(remote.sample_actions(OBS, 6, key), ChunkPolicy().sample_actions(OBS, 6, key))
            scorer = CriticScorer.from_params(STATE_CFG, known_critic_params(), OBS, ACTION_DIM)
            steered = ValueGuidedPolicy(remote, scorer, k=6)
            first = steered.act(OBS, key)
            proposals = ChunkPolicy().sample_actions(OBS, 6, key)
            best = int(np.argmax(known_q(proposals[:, 0])[:2].min(0)))
            np.testing.assert_array_equal(first, proposals[best, 0])
            np.testing.assert_array_equal(np.stack([steered.act(OBS, key) for _ in range(3)]), proposals[best, 1:])
            steered.reset()
            assert served.policy.resets == 1
    finally:
        served.close()


def test_a_server_that_is_down_is_named_with_the_op_and_timeout() -> None:
    from serl_stack.orchestrate import free_port

    endpoint = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    start = time.monotonic()
    with pytest.raises(RemotePolicyTimeout) as info:
        RemotePolicy(endpoint, timeout_s=0.3)
    assert time.monotonic() - start < 2.0
    text = str(info.value)
    assert endpoint in text and "'hello'" in text and "no server reachable" in text and "0.3 s" in text
    assert (info.value.endpoint, info.value.op, info.value.timeout_s) == (endpoint, "hello", 0.3)


def test_a_slow_server_times_out_and_the_client_recovers(served_sac: Served) -> None:
    slow, local = served_sac.policy, served_sac.policy.policy
    with RemotePolicy(served_sac.endpoint, timeout_s=0.2) as remote:
        key = np.array([0, 7], np.uint32)
        local.act(OBS, key), local.sample_actions(OBS, 3, key)  # compiled here: the server must not compile later
        slow.arm()  # the server's next act takes 0.6 s, longer than the client's 0.2 s
        start = time.monotonic()
        with pytest.raises(RemotePolicyTimeout) as info:
            remote.act(OBS, key)
        assert 0.15 < time.monotonic() - start < 0.5
        assert "'act'" in str(info.value) and "no reply within the timeout of 0.2 s" in str(info.value)
        assert remote.reconnects == 1
        assert slow.done.wait(5.0)  # the server finished the slow request (its late reply is discarded)
        assert remote.act(OBS, key).tobytes() == local.act(OBS, key).tobytes()
        assert remote.sample_actions(OBS, 3, key).tobytes() == local.sample_actions(OBS, 3, key).tobytes()


def _answer_once(router: zmq.Socket, reply: bytes) -> None:
    if router.poll(5000):
        frames = router.recv_multipart()
        router.send_multipart([*frames[:-1], reply])


def test_a_server_speaking_another_protocol_version_is_refused() -> None:
    """A real ROUTER that answers `hello` in protocol version v + 1."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    future = {"v": PROTOCOL_VERSION + 1, "type": "hello", "from": "x", "seq": 1, "body": {"service": SERVICE}}
    thread = threading.Thread(target=_answer_once, args=(router, pack(future)))
    thread.start()
    try:
        with pytest.raises(RemotePolicyError, match="another protocol version") as info:
            RemotePolicy(endpoint, timeout_s=3.0)
        assert endpoint in str(info.value) and f"'v' is {PROTOCOL_VERSION + 1}" in str(info.value)
    finally:
        thread.join()
        router.close()


def test_the_server_answers_another_version_or_a_failing_policy_with_an_error() -> None:
    class Failing(ChunkPolicy):
        def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
            raise RuntimeError("camera unplugged")

    served = Served(Failing())
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(served.endpoint)
        req.send(pack({"v": PROTOCOL_VERSION + 1, "type": "act", "from": "old", "seq": 1, "body": {}}))
        assert req.poll(5000)
        reply = open_envelope(req.recv())
        assert reply["type"] == "error" and f"'v' is {PROTOCOL_VERSION + 1}" in reply["body"]["error"]
        with RemotePolicy(served.endpoint, timeout_s=5.0) as remote:
            with pytest.raises(RemotePolicyError, match="act failed on the server: RuntimeError: camera unplugged"):
                remote.act(OBS, np.array([0, 1], np.uint32))
            assert remote.sample_actions(OBS, 2, np.array([0, 1], np.uint32)).shape == (2, 4, ACTION_DIM)
        assert served.server.errors == 2
    finally:
        req.close()
        served.close()


def test_action_bounds_are_mapped_or_refused_explicitly() -> None:
    served = Served(sac_policy(), action_low=-0.5, action_high=[0.5, 0.5, 1.5])
    try:
        with RemotePolicy(served.endpoint, timeout_s=5.0) as remote:
            assert "affine map" in remote.normalization and "[-0.5, -0.5, -0.5]" in remote.normalization
            key = np.array([3, 4], np.uint32)
            raw = served.policy.act(OBS, key)
            expected = (np.array([-1, -1, -1]) + (raw + 0.5) * np.array([2.0, 2.0, 1.0])).astype(np.float32)
            np.testing.assert_allclose(remote.act(OBS, key), expected, rtol=1e-6, atol=1e-6)
            assert remote.sample_actions(OBS, 2, key).dtype == np.float32
        with pytest.raises(RemotePolicyError, match=r"action range mismatch: the server's policy outputs actions in "
                                                    r"\[\[-0.5, -0.5, -0.5\], \[0.5, 0.5, 1.5\]\]"):
            RemotePolicy(served.endpoint, timeout_s=5.0, bounds="check")
    finally:
        served.close()


def test_serve_policy_runs_until_stopped_and_reports() -> None:
    stop, ready = threading.Event(), threading.Event()
    servers: list[PolicyServer] = []
    result: dict[str, Any] = {}

    def on_ready(server: PolicyServer) -> None:
        servers.append(server)
        ready.set()

    thread = threading.Thread(target=lambda: result.update(serve_policy(
        ChunkPolicy(), "tcp://127.0.0.1:*", stop=stop, on_ready=on_ready)))
    thread.start()
    try:
        assert ready.wait(5.0)
        with RemotePolicy(servers[0].endpoint, timeout_s=5.0) as remote:
            remote.reset()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert result == {"endpoint": servers[0].endpoint, "served": 2, "errors": 0}
    with pytest.raises(RemotePolicyTimeout):  # the socket is closed once serving ends
        RemotePolicy(result["endpoint"], timeout_s=0.2)


# ------------------------------------------------------------------------------------------------ boundary


def test_steering_stays_on_the_actors_side_of_the_inference_boundary() -> None:
    """In a fresh interpreter: steering (scoring and steering a policy) loads none of the learner's machinery, and
    the remote client/server alone does not even load JAX (a generalist's server may live in its own env)."""
    import json
    import subprocess
    import sys

    from test_inference_boundary import LEARNER_ONLY  # the one list of what the actor side must not load

    code = ("import json, sys\nimport serl_stack.steering.remote\nremote_only = sorted(sys.modules)\n"
            "import serl_stack.steering.guided\nprint(json.dumps([remote_only, sorted(sys.modules)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    remote_only, with_guided = (set(m) for m in json.loads(out.stdout.splitlines()[-1]))
    assert "zmq" in remote_only and "jax" not in remote_only
    assert "jax" in with_guided and sorted(m for m in LEARNER_ONLY if m in with_guided) == []
    assert not [m for m in with_guided if m.startswith("optax")]


@pytest.mark.slow
def test_serl_serve_policy_hosts_a_bc_folder_bit_exactly_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The command a user runs next to a robot: `serl serve-policy --bc DIR` on a free port, a `RemotePolicy` that
    acts exactly as the folder's policy in-process does, and Ctrl-C (SIGINT) ending it with its JSON summary."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from test_demo_reg import fake_bc_folder  # tests/ is on sys.path (rootdir conftest-less layout)

    from serl_stack.inference import load_bc_policy

    folder = fake_bc_folder(tmp_path, ["state/x"], 4, 2)
    (folder / "config.yaml").write_text("train:\n  actor_threads: 1\n")  # serve-policy reads the run's thread count
    proc = subprocess.Popen([sys.executable, "-m", "serl_stack.cli", "serve-policy", "--bc", str(folder),
                             "--endpoint", "tcp://127.0.0.1:*"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        line = proc.stderr.readline()
        match = re.search(r"on (tcp://127\.0\.0\.1:\d+)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        local, _ = load_bc_policy(folder)
        remote = RemotePolicy(match.group(1), timeout_s=20.0)
        obs = {"state": {"x": np.arange(4, dtype=np.float32)}}
        key = np.asarray(jax.random.key_data(jax.random.PRNGKey(3)))
        np.testing.assert_array_equal(remote.act(obs, key, deterministic=True), local.act(obs, key, True))
        np.testing.assert_array_equal(remote.sample_actions(obs, 5, key), local.sample_actions(obs, 5, key))
        remote.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["served"] >= 3 and summary["errors"] == 0 and summary["endpoint"] == match.group(1)
