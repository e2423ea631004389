"""Data parallelism: with two devices the sharded update equals the one-device update.

JAX fixes its device count at import, so the comparison runs in a fresh process with
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (two CPU devices standing in for two accelerators).
Tolerance: rtol 1e-5, atol 1e-6 on every leaf (the all-reduced gradient sums in a different order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RTOL, ATOL = 1e-5, 1e-6


def worker() -> None:
    import jax
    import numpy as np

    from serl_stack.agents.sac import SACAgent
    from serl_stack.agents.sharding import data_mesh, replicate, shard_agent
    from serl_stack.config import AgentConfig
    from serl_stack.data.device_replay import DeviceReplay

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sac import random_batch

    assert len(jax.devices()) == 2, jax.devices()
    cfg = AgentConfig(hidden_dims=(32, 32), batch_size=16, utd=3, num_critics=4, critic_subset=2,
                      critic_layer_norm=True)
    batch = random_batch(cfg.utd * cfg.batch_size, obs_dim=5, action_dim=2)
    agent = SACAgent.create(0, 5, 2, cfg)
    mesh = data_mesh(cfg.batch_size)
    sharded = shard_agent(agent, mesh)
    out: dict = {}

    def max_rel_diff(a, b) -> float:
        worst = 0.0
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
            worst = max(worst, float(np.max(np.abs(x - y) / (np.abs(y) + ATOL), initial=0.0)))
        return worst

    one, _ = agent.update(batch)
    two, _ = sharded.update(batch)
    for _ in range(3):  # a few more steps, so differences would compound if the math differed
        one, _ = one.update(batch)
        two, _ = two.update(batch)
    out["host_batch_max_rel_diff"] = max_rel_diff(one, two)
    out["param_devices"] = len(jax.tree.leaves(two.critic.params)[0].sharding.device_set)
    hlo = SACAgent.update.lower(sharded, batch).compile().as_text()
    out["all_reduce_in_hlo"] = "all-reduce" in hlo

    # In-jit sampling from a replicated device replay, as the learner does it.
    replay = DeviceReplay.create(200, 5, 2).insert_batch(random_batch(200, seed=3, obs_dim=5, action_dim=2))
    key = jax.random.PRNGKey(7)
    one, _ = agent.update_from_replay(replay, key)
    two, _ = sharded.update_from_replay(replicate(replay, mesh), key)
    out["replay_max_rel_diff"] = max_rel_diff(one, two)

    # A bad batch size for the device count is named.
    try:
        data_mesh(15)
    except ValueError as e:
        out["bad_batch_error"] = str(e)
    print("RESULT " + json.dumps(out))


@pytest.mark.slow
def test_sharded_step_equals_one_device_step() -> None:
    here = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_sharding; test_sharding.worker()"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["param_devices"] == 2  # parameters replicated on both devices
    assert result["all_reduce_in_hlo"]  # the step really is split: gradients are all-reduced across devices
    # The worker asserted every leaf within (RTOL, ATOL) after 4 host-batch and 1 in-jit-sampled updates.
    print(f"max relative difference: host batches {result['host_batch_max_rel_diff']:.2e}, "
          f"in-jit sampling {result['replay_max_rel_diff']:.2e}")
    assert "agent.batch_size: got 15, expected a multiple of the 2 visible devices" in result["bad_batch_error"]
