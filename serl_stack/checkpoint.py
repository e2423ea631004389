"""Checkpoints on disk through orbax-checkpoint.

Owns: where a run's checkpoints live, how many are kept, and saving/restoring an agent pytree together with a
small JSON record of counters (update step, env steps, ...) and, beside them, the actor-only `policy` item (the
parameters the learner broadcasts: actor, observation normalization, encoder), which the inference side restores
without building the learner's agent, optimizer or replay. Restoring needs a template pytree of the same
structure, so nothing but arrays is read from disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

T = TypeVar("T")
POLICY_ITEM = "policy"
"""The checkpoint item holding the actor-only parameters (what the learner broadcasts to actors)."""


class _PartialRestoreFilter(logging.Filter):
    """Restoring one item of several is how this module works (the learner reads `state`, the actor side reads
    `policy`); orbax warns about every item left out. Drop those lines, keep every other warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was found in the checkpoint, but could not be restored" not in record.getMessage()


logging.getLogger("absl").addFilter(_PartialRestoreFilter())


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None, policy: Any = None) -> Path:
        """Save `state` (a pytree of arrays), `meta` (JSON-able) and `policy` (the actor-only pytree, if given) as
        checkpoint `step`; returns its folder.

        A checkpoint already at `step` is replaced: e.g. Ctrl-C right after a periodic checkpoint, before the next
        update, saves the same step again with newer counters (env steps, log offset), and must not fail there.
        """
        if step in self._mgr.all_steps():
            self._mgr.delete(step)
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if policy is not None:
            items[POLICY_ITEM] = ocp.args.StandardSave(policy)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
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

    def restore_policy(self, template: T, step: int) -> tuple[T, dict[str, Any]]:
        """Restore only the actor-only `policy` item of checkpoint `step` (and its counters) into `template`'s
        structure; the learner's state (optimizers, critics' targets) is not read."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._mgr.restore(
            step, args=ocp.args.Composite(**{POLICY_ITEM: ocp.args.StandardRestore(abstract),
                                             "meta": ocp.args.JsonRestore()})
        )
        return out[POLICY_ITEM], dict(out["meta"] or {})

    def items(self, step: int) -> list[str]:
        """The items checkpoint `step` holds (`state`, `meta`, and `policy` when the learner wrote one)."""
        folder = self.directory / str(step)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def stored_shapes(self, step: int, item: str = "state") -> dict[str, tuple[int, ...]]:
        """`{dotted leaf path: shape}` of the arrays in item `item` of checkpoint `step`, from orbax's metadata
        only (nothing is read into memory): to name what differs before a restore that would fail without saying
        which array."""
        manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={item: ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )
        try:
            return leaf_shapes(manager.item_metadata(step)[item])
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
