"""Pure JAX agents: networks, losses and the SAC update. No I/O, no globals."""
