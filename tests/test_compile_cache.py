"""`serl_stack.cli.set_compile_cache_env`: where every `serl` process caches the XLA programs it compiles, and how a
user moves or disables that cache (docs/training.md, "Compilation cache")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Apply the product's settings, then compile and run one small program (its result shows it ran).
SCRIPT = """
from serl_stack.cli import set_compile_cache_env
set_compile_cache_env()
import jax, jax.numpy as jnp
print(float(jax.jit(lambda x: (x * 3.0 + 1.0).sum())(jnp.arange(5.0))))
"""
CACHE_KEYS = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "XDG_CACHE_HOME")


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CACHE_KEYS}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**base, **env})


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_process_caches_its_programs_under_the_users_cache_home_and_the_next_one_reuses_them(tmp_path: Path) -> None:
    first = _run(XDG_CACHE_HOME=str(tmp_path))
    assert first.returncode == 0 and first.stdout.strip() == "35.0", first.stderr[-2000:]
    cached = _entries(tmp_path / "serl_stack" / "xla")
    assert cached, "the default cache folder holds no compiled program"
    again = _run(XDG_CACHE_HOME=str(tmp_path))
    assert again.returncode == 0 and again.stdout.strip() == "35.0", again.stderr[-2000:]
    assert _entries(tmp_path / "serl_stack" / "xla") == cached  # the same program: read back, nothing new written
    assert "Error" not in again.stderr, again.stderr[-2000:]


def test_the_users_own_settings_win(tmp_path: Path) -> None:
    home, own = tmp_path / "home", tmp_path / "own"
    moved = _run(XDG_CACHE_HOME=str(home), JAX_COMPILATION_CACHE_DIR=str(own))
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert _entries(own) and not _entries(home / "serl_stack" / "xla")
    off = _run(XDG_CACHE_HOME=str(home), JAX_ENABLE_COMPILATION_CACHE="false")
    assert off.returncode == 0 and off.stdout.strip() == "35.0", off.stderr[-2000:]
    assert not _entries(home / "serl_stack" / "xla")


def test_a_cache_home_that_cannot_be_written_leaves_the_cache_off_without_warnings(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _run(XDG_CACHE_HOME=str(blocker))  # mkdir under a regular file fails, for root too
    assert proc.returncode == 0 and proc.stdout.strip() == "35.0", proc.stderr[-2000:]
    assert "compilation cache" not in proc.stderr.lower(), proc.stderr[-2000:]
