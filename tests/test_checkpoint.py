"""Checkpointer on disk (real orbax): saving a step that already exists replaces it instead of failing.

This is what the learner does when Ctrl-C lands right after a periodic checkpoint and before the next update:
the same update step is saved again, with newer counters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serl_stack.checkpoint import Checkpointer


def test_saving_an_existing_step_again_replaces_it(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        first = {"w": np.arange(4, dtype=np.float32)}
        ckpt.save(300, first, {"env_steps": 700})
        second = {"w": np.arange(4, dtype=np.float32) * 2}
        path = ckpt.save(300, second, {"env_steps": 712})
        assert path == tmp_path / "checkpoints" / "300" and ckpt.latest_step() == 300
        state, meta = ckpt.restore({"w": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(state["w"], second["w"])
        assert meta == {"env_steps": 712}
    finally:
        ckpt.close()
    # A new process sees only the replacement.
    again = Checkpointer(tmp_path / "checkpoints")
    try:
        state, meta = again.restore({"w": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(state["w"], second["w"])
        assert meta["env_steps"] == 712 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["300"]
    finally:
        again.close()
