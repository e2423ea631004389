"""Checkpoints on disk through orbax-checkpoint.

Owns: where a run's checkpoints live, how many are kept, and saving/restoring an agent pytree together with a
small JSON record of counters (update step, env steps, ...). Restoring needs a template pytree of the same
structure (a freshly created agent), so nothing but arrays is read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

T = TypeVar("T")


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> Path:
        """Save `state` (a pytree of arrays) and `meta` (JSON-able) as checkpoint `step`; returns its folder.

        A checkpoint already at `step` is replaced: e.g. Ctrl-C right after a periodic checkpoint, before the next
        update, saves the same step again with newer counters (env steps, log offset), and must not fail there.
        """
        if step in self._mgr.all_steps():
            self._mgr.delete(step)
        self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
            force=True,
        )
        self._mgr.wait_until_finished()
        return self.directory / str(step)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def restore(self, template: T, step: int | None = None) -> tuple[T, dict[str, Any]]:
        """Restore checkpoint `step` (default: the latest) into the structure of `template`."""
        step = self._mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return out["state"], dict(out["meta"] or {})

    def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """`{dotted leaf path: shape}` of the arrays in checkpoint `step`, from orbax's metadata only (nothing is
        read into memory): to name what differs before a restore that would fail without saying which array."""
        manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )
        try:
            return leaf_shapes(manager.item_metadata(step)["state"])
        finally:
            manager.close()

    def close(self) -> None:
        self._mgr.close()


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """`{dotted leaf path: shape}` of a pytree of arrays (or of orbax array metadata)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[".".join(map(str, parts))] = tuple(leaf.shape)
    return out
