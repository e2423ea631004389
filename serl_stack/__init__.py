"""serl_stack: safe, sample-efficient real-robot reinforcement learning (SAC learner, ZeroMQ actor, MuJoCo Franka)."""

__version__ = "0.1.0"
