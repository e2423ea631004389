"""Value-guided steering of a base policy (V-GPS, Nakamoto et al.) and policies served from another process.

Owns: `guided` (`CriticScorer`: a critic ensemble scoring K candidate actions at one observation, encoded once;
`ValueGuidedPolicy`: any `Policy`'s K proposals reranked by that critic) and `remote` (`PolicyServer`,
`serve_policy` and its client `RemotePolicy`: a `Policy` behind ZeroMQ with the transport's msgpack framing), and
`acting` (the actor's `steering.*`: the steered policy it acts with, and what preflight checks).

This package sits on the actor's side of the inference boundary: it imports `serl_stack.inference` and the
network definitions, never the learner's updater, losses, replay or optax. The submodules are not imported here,
so `remote` (ZeroMQ and msgpack only) can be used without loading JAX.
"""
