"""Test-session defaults, so a bare `pytest tests/...` behaves like `make test`.

- MUJOCO_GL: MuJoCo fixes its GL backend from it when first imported; without it MuJoCo tries GLFW, which aborts the
  whole process on a machine with no display (the render tests then take every later test down with them).
- The XLA compilation cache (`serl_stack.cli.set_compile_cache_env`, which every `serl` process applies): here in
  a folder of this session's own, so no test reads programs a previous session compiled and the user's cache is
  left alone; the `serl` subprocesses the tests start inherit it, and so do the compiles in this process.
"""

import atexit
import os
import shutil
import tempfile

from serl_stack.cli import set_compile_cache_env

os.environ.setdefault("MUJOCO_GL", "egl")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="serl-test-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
set_compile_cache_env()  # the product's other cache settings, with the folder above
