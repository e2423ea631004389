"""A `Policy` that runs in another process or on another machine, over ZeroMQ.

Owns: the policy service's messages, `PolicyServer` (a ROUTER socket answering requests with any in-process
`Policy`), `serve_policy` (serve until Ctrl-C or a stop event) and its client `RemotePolicy` (a `Policy` whose
every call is one request/reply on a REQ socket). Knows nothing of learning and does not import JAX: a user's
generalist (Octo, OpenVLA, a diffusion policy) can sit behind a server in its own environment.

Wire format: the transport's framing (`transport.protocol`): a msgpack map `{"v": PROTOCOL_VERSION, "type":
op, "from": client id, "seq": n, "body": {...}}`, numpy arrays as dtype/shape/bytes, so observations, PRNG keys
and actions arrive bit for bit. Requests (`type`): `hello`/`info` (body `{}` -> the policy's description),
`act` (`{"obs", "key", "deterministic"}` -> `{"action": (A,)}`), `sample_actions` (`{"obs", "k", "key"}` ->
`{"actions": (k, H, A)}`), `reset` (`{}` -> `{}`). The reply has the request's type and seq, or type `error` with
`{"error": text}`. The description (`hello`): `{"service": "serl-policy", "action_dim", "chunk", "action_low",
"action_high", "name"}`: the bounds are those of the actions the policy OUTPUTS; `RemotePolicy` maps them onto
the env's [-1, 1] (or refuses them) explicitly, because a generalist trained on raw deltas silently fed to a
[-1, 1] env is the classic V-GPS adapter bug.

After a timeout the client drops its REQ socket and opens a new one (ZeroMQ's "lazy pirate"): a REQ socket that
sent a request and got no reply cannot send again, and a late reply to the old socket is discarded by ZeroMQ.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from serl_stack import interrupt
from serl_stack.errors import TransportError
from serl_stack.transport.protocol import PROTOCOL_VERSION, ProtocolError, envelope, open_envelope

if TYPE_CHECKING:
    from serl_stack.inference import Policy

SERVICE = "serl-policy"
"""What a policy server answers to `hello` (a client that reached some other ZeroMQ service says so)."""
OPS = ("hello", "info", "act", "sample_actions", "reset")
DEFAULT_MAX_BYTES = 64 * 2**20
"""Largest message either side accepts (a few camera images per observation fit many times over)."""
SERVER_ID = "policy-server"


class RemotePolicyError(TransportError):
    """A remote policy call failed: the text names the endpoint, the operation and what went wrong."""

    def __init__(self, endpoint: str, op: str, reason: str) -> None:
        super().__init__(f"remote policy at {endpoint}, '{op}': {reason}")
        self.endpoint, self.op, self.reason = endpoint, op, reason


class RemotePolicyTimeout(RemotePolicyError):
    """No connection or no reply within the client's timeout (the server is down, stalled or too slow)."""

    def __init__(self, endpoint: str, op: str, reason: str, timeout_s: float) -> None:
        super().__init__(endpoint, op, reason)
        self.timeout_s = timeout_s


def _bounds(value: Any, action_dim: int, name: str) -> np.ndarray:
    """`value` (a number or A numbers) as float64 (A,), checked finite."""
    a = np.broadcast_to(np.asarray(value, np.float64), (action_dim,)) if np.ndim(value) == 0 else \
        np.asarray(value, np.float64)
    if a.shape != (action_dim,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: got {np.asarray(value).tolist()!r:.120}, expected a finite number or "
                         f"{action_dim} finite numbers")
    return np.array(a)


def _key_array(key: Any) -> Any:
    """A PRNG key as the uint32 array it is made of (new-style typed keys are unwrapped), None unchanged."""
    if key is None:
        return None
    try:
        a = np.asarray(key)
    except TypeError:  # a typed JAX key refuses conversion; its raw data is what a policy takes back
        import jax

        a = np.asarray(jax.random.key_data(key))
    if a.dtype.kind not in "ui":
        raise ValueError(f"key: got an array of dtype {a.dtype}, expected a JAX PRNG key (uint32)")
    return a


# ------------------------------------------------------------------------------------------------ the server


class PolicyServer:
    """Answers policy requests on `endpoint` (bound at construction, e.g. `tcp://0.0.0.0:5560`; port `*` picks a
    free one, see `endpoint`) with `policy`, one request at a time.

    `action_low`/`action_high` declare the range of the actions `policy` outputs (default: the policy's
    `action_low`/`action_high` attributes if it has them, else the `Policy` protocol's [-1, 1]); `action_dim`
    defaults to the policy's `action_dim` attribute. A ROUTER socket serves REQ and DEALER clients alike; a
    request that fails (a malformed message, another protocol version, the policy raising) is answered with an
    `error` reply naming the problem, and the server goes on.
    """

    def __init__(self, policy: Policy, endpoint: str, action_dim: int | None = None, action_low: Any = None,
                 action_high: Any = None, name: str = "", max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        dim = action_dim if action_dim is not None else getattr(policy, "action_dim", None)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            source = "the argument" if action_dim is not None else f"{type(policy).__name__}.action_dim"
            raise ValueError(f"action_dim: got {dim!r} (from {source}), expected an int >= 1")
        low = _bounds(getattr(policy, "action_low", -1.0) if action_low is None else action_low, dim, "action_low")
        high = _bounds(getattr(policy, "action_high", 1.0) if action_high is None else action_high, dim,
                       "action_high")
        if not np.all(high > low):
            raise ValueError(f"action_high: got {high.tolist()}, expected each above action_low {low.tolist()}")
        chunk = int(getattr(policy, "chunk", 1))
        self.policy, self._max_bytes = policy, int(max_message_bytes)
        self.info: dict[str, Any] = {"service": SERVICE, "action_dim": dim, "chunk": chunk, "action_low": low,
                                     "action_high": high, "name": name or type(policy).__name__}
        """What `hello` and `info` answer."""
        self.served = 0
        """Requests answered (errors included)."""
        self.errors = 0
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as e:
            self._socket.close(linger=0)
            raise TransportError(f"endpoint: cannot bind {endpoint!r}: {e}; expected a free tcp://HOST:PORT "
                                 "(or PORT '*' for any free one)") from e
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        """The bound endpoint, with the port chosen when `endpoint` asked for `*`."""

    def handle(self, timeout_ms: int = 100) -> bool:
        """Answer the requests waiting, blocking up to `timeout_ms` for the first; True if any was answered."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return False
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            # REQ clients put an empty delimiter between their routing id and the message; DEALERs need not.
            self._socket.send_multipart([*frames[:-1], self._answer(frames[-1])])
            self.served += 1

    def _answer(self, data: bytes) -> bytes:
        try:
            msg = open_envelope(data, self._max_bytes, expect=set(OPS))
        except ProtocolError as e:
            self.errors += 1
            return envelope("error", SERVER_ID, {"error": f"bad request: {e}"})
        op, seq, body = msg["type"], msg["seq"], msg["body"]
        try:
            return envelope(op, SERVER_ID, self._run(op, body), seq)
        except Exception as e:  # the policy's own failure goes back to the client; the server keeps serving
            self.errors += 1
            return envelope("error", SERVER_ID, {"error": f"{op} failed on the server: {type(e).__name__}: {e}"}, seq)

    def _run(self, op: str, body: Any) -> dict[str, Any]:
        if op in ("hello", "info"):
            return self.info
        if op == "reset":
            self.policy.reset()
            return {}
        if not isinstance(body, Mapping) or not isinstance(body.get("obs"), Mapping):
            raise ValueError(f"body: expected a map with 'obs' (a map of arrays), got {type(body).__name__}")
        if op == "act":
            action = self.policy.act(body["obs"], body.get("key"), bool(body.get("deterministic", False)))
            return {"action": np.asarray(action)}
        k = body.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"body field 'k': got {k!r:.40}, expected an int >= 1")
        return {"actions": np.asarray(self.policy.sample_actions(body["obs"], k, body.get("key")))}

    def serve(self, stop: threading.Event | None = None, poll_ms: int = 100) -> None:
        """Answer requests until `stop` is set or Ctrl-C (`interrupt.check`, which raises KeyboardInterrupt)."""
        while stop is None or not stop.is_set():
            interrupt.check()
            self.handle(poll_ms)

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_policy(policy: Policy, endpoint: str, *, action_dim: int | None = None, action_low: Any = None,
                 action_high: Any = None, name: str = "", stop: threading.Event | None = None,
                 on_ready: Callable[[PolicyServer], None] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Serve `policy` on `endpoint` until `stop` is set or Ctrl-C; returns `{"endpoint", "served", "errors"}`.

    `on_ready(server)` is called once the socket is bound (e.g. to print the endpoint a client should use). The
    keyword arguments are `PolicyServer`'s. Ctrl-C ends serving normally (it is how a server is stopped).
    """
    with PolicyServer(policy, endpoint, action_dim, action_low, action_high, name, max_message_bytes) as server:
        if on_ready is not None:
            on_ready(server)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve(stop)
        return {"endpoint": server.endpoint, "served": server.served, "errors": server.errors}


# ------------------------------------------------------------------------------------------------ the client


class RemotePolicy:
    """The `Policy` served at `endpoint` by a `PolicyServer` (`serl serve-policy`), acting through ZeroMQ.

    Every call must finish within `timeout_s`, else `RemotePolicyTimeout` (a `RemotePolicyError`) says whether no
    connection was made (server down) or no reply came (server too slow or stalled); the socket is then
    replaced, so the next call works once the server answers again. A server speaking another protocol version
    or failing a request raises `RemotePolicyError` with its reason.

    Action normalization is explicit: the server reports the range its policy's actions are in, and the env
    takes [`env_low`, `env_high`] (default [-1, 1], the action contract). Equal ranges pass actions through
    untouched (bit for bit); otherwise `bounds="map"` maps them affinely onto the env's range (`normalization`
    says how) and `bounds="check"` refuses to connect, naming both ranges. One caller at a time: ZeroMQ sockets
    are not thread-safe.
    """

    def __init__(self, endpoint: str, timeout_s: float = 1.0, bounds: str = "map", env_low: Any = -1.0,
                 env_high: Any = 1.0, client_id: str = "remote-policy",
                 max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: got {timeout_s!r}, expected > 0")
        if bounds not in ("map", "check"):
            raise ValueError(f"bounds: got {bounds!r}, expected 'map' or 'check'")
        self.endpoint, self.timeout_s, self.client_id = endpoint, float(timeout_s), client_id
        self._max_bytes = int(max_message_bytes)
        self._socket: zmq.Socket | None = None
        self._seq = 0
        self.reconnects = 0
        """How many times the socket was replaced after a timeout."""
        self.info = self._describe(self._request("hello", {"client": client_id}))
        """The server's description: service, action_dim, chunk, action_low, action_high, name."""
        self.action_dim, self.chunk = int(self.info["action_dim"]), int(self.info["chunk"])
        low, high = self.info["action_low"], self.info["action_high"]
        env_lo, env_hi = _bounds(env_low, self.action_dim, "env_low"), _bounds(env_high, self.action_dim, "env_high")
        self._scale: np.ndarray | None = None
        self._offset: np.ndarray | None = None
        self.normalization = "identity: the server's actions are in the env's range"
        """How the server's actions become the env's, in words."""
        if not (np.array_equal(low, env_lo) and np.array_equal(high, env_hi)):
            ranges = (f"the server's policy outputs actions in [{low.tolist()}, {high.tolist()}], the env takes "
                      f"[{env_lo.tolist()}, {env_hi.tolist()}]")
            if bounds == "check":
                self.close()
                raise RemotePolicyError(endpoint, "hello", f"action range mismatch: {ranges} (bounds='check'; "
                                        "use bounds='map' to map one onto the other)")
            self._scale = (env_hi - env_lo) / (high - low)
            self._offset = env_lo - low * self._scale
            self.normalization = f"affine map: {ranges}; env action = offset + scale * server action"

    # ------------------------------------------------------------------------------------------ the Policy

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        body = {"obs": obs, "key": _key_array(key), "deterministic": bool(deterministic)}
        action = self._array(self._request("act", body), "act", "action", (self.action_dim,))
        return self._to_env(action)

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        body = {"obs": obs, "k": int(k), "key": _key_array(key)}
        actions = self._array(self._request("sample_actions", body), "sample_actions", "actions",
                              (int(k), self.chunk, self.action_dim))
        return self._to_env(actions)

    def reset(self) -> None:
        self._request("reset", {})

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ the wire

    def _to_env(self, a: np.ndarray) -> np.ndarray:
        if self._scale is None:
            return a
        return (self._offset + self._scale * a).astype(np.float32)

    def _array(self, body: Mapping[str, Any], op: str, field: str, shape: tuple[int, ...]) -> np.ndarray:
        a = body.get(field)
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind != "f":
            seen = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise RemotePolicyError(self.endpoint, op, f"reply field '{field}': got {seen}, expected a float array "
                                    f"of shape {shape}")
        return a

    def _describe(self, info: Mapping[str, Any]) -> dict[str, Any]:
        if info.get("service") != SERVICE:
            raise RemotePolicyError(self.endpoint, "hello", f"reply field 'service': got {info.get('service')!r:.40}, "
                                    f"expected {SERVICE!r} (is this a `serl serve-policy` endpoint?)")
        dim, chunk = info.get("action_dim"), info.get("chunk")
        for name, value in (("action_dim", dim), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RemotePolicyError(self.endpoint, "hello", f"reply field '{name}': got {value!r:.40}, "
                                        "expected an int >= 1")
        out = dict(info)
        for name in ("action_low", "action_high"):
            try:
                out[name] = _bounds(info.get(name), int(dim), name)
            except ValueError as e:
                raise RemotePolicyError(self.endpoint, "hello", f"reply field {e}") from e
        if not np.all(out["action_high"] > out["action_low"]):
            raise RemotePolicyError(self.endpoint, "hello", f"reply: action_high {out['action_high'].tolist()} is "
                                    f"not above action_low {out['action_low'].tolist()}")
        return out

    def _connect(self) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)
        # Queue a request only on a completed connection: "not writable" then means no server is there, which
        # tells a server that is down apart from one that is slow.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoint)
        return sock

    def _reset_socket(self) -> None:
        self.close()
        self.reconnects += 1

    def _request(self, op: str, body: Any) -> dict[str, Any]:
        if self._socket is None:
            self._socket = self._connect()
        sock = self._socket
        deadline = time.monotonic() + self.timeout_s

        def remaining_ms() -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

        if not sock.poll(remaining_ms(), zmq.POLLOUT):
            self._reset_socket()
            raise RemotePolicyTimeout(self.endpoint, op, f"no server reachable (no connection within "
                                      f"{self.timeout_s:g} s); is `serl serve-policy` running there?", self.timeout_s)
        self._seq += 1
        sock.send(envelope(op, self.client_id, body, self._seq))
        if not sock.poll(remaining_ms(), zmq.POLLIN):
            # The REQ socket now waits for a reply that may never come: replace it (lazy pirate).
            self._reset_socket()
            raise RemotePolicyTimeout(self.endpoint, op, f"no reply within the timeout of {self.timeout_s:g} s (the "
                                      "server is slower than the timeout, stalled, or went away); the connection "
                                      "was reset for the next call", self.timeout_s)
        data = sock.recv()
        try:
            msg = open_envelope(data, self._max_bytes, expect={op, "error"})
        except ProtocolError as e:
            self._reset_socket()
            if e.reason == "wrong version":
                raise RemotePolicyError(self.endpoint, op, f"the server speaks another protocol version: {e}") from e
            raise RemotePolicyError(self.endpoint, op, f"malformed reply: {e}") from e
        reply = msg["body"]
        if msg["type"] == "error":
            text = reply.get("error") if isinstance(reply, Mapping) else reply
            raise RemotePolicyError(self.endpoint, op, f"the server answered with an error: {text!s:.500}")
        if msg["seq"] != self._seq or not isinstance(reply, Mapping):
            self._reset_socket()
            raise RemotePolicyError(self.endpoint, op, f"reply seq {msg['seq']} with a {type(reply).__name__} body; "
                                    f"expected seq {self._seq} and a map")
        return dict(reply)


__all__ = ["OPS", "PROTOCOL_VERSION", "SERVICE", "PolicyServer", "RemotePolicy", "RemotePolicyError",
           "RemotePolicyTimeout", "serve_policy"]
