"""The ZeroMQ link between two real processes: what crosses it arrives with identical dtype, shape and bytes."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.learner_server import TOPIC_PARAMS, LearnerServer
from serl_stack.transport.protocol import ProtocolError, envelope, open_envelope, pack, unpack

MAX = 1 << 24


def sample_transition() -> dict:
    """Deterministic transition exercising the awkward cases: uint8 images, bool, 0-d, NaN payloads."""
    rng = np.random.default_rng(123)
    nan_payloads = np.array([0x7FC00000, 0x7FA00001, 0xFFC00123, 0x3F800000], dtype=np.uint32).view(np.float32)
    return {
        "observation": {
            "state": {"tcp_pose": rng.normal(size=7).astype(np.float32), "flags": np.array([True, False, True])},
            "images": {"wrist": rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)},
            "task": {"goal_pos": np.array([np.nan, -np.inf, np.inf], dtype=np.float64)},
        },
        "action": rng.uniform(-1, 1, size=7).astype(np.float32),
        "reward": np.float32(0.5),
        "scalar0d": np.array(3, dtype=np.int16),
        "nan_payloads": nan_payloads,
        "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
        "empty": np.zeros((0, 5), dtype=np.float16),
        "terminated": np.bool_(True),
        "truncated": False,
        "seq_id": 2**40,
        "label": "ünïcode",
    }


def assert_identical(a, b, path="") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (np.ndarray, np.generic)):
        a = np.asarray(a)
        assert isinstance(b, np.ndarray), f"{path}: {type(b)}"
        assert b.dtype == a.dtype, f"{path}: dtype {b.dtype} != {a.dtype}"
        assert b.shape == a.shape, f"{path}: shape {b.shape} != {a.shape}"
        assert b.tobytes() == np.ascontiguousarray(a).tobytes(), f"{path}: bytes differ"
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def _actor_process(tport: int, pport: int, result: mp.Queue) -> None:
    """Child: send the sample transition, wait for params, echo them back, report what it saw."""
    client = ActorClient("127.0.0.1", tport, pport, "actor-test", MAX)
    seq = client.send("transitions", {"transitions": [sample_transition()]})
    deadline = time.monotonic() + 30
    while (client.params_body is None or client.acked_seq < seq) and time.monotonic() < deadline:
        client.poll(100)
    if client.params_body is None:
        result.put("no params")
        return
    client.send("transitions", {"transitions": [client.params_body["params"]]})
    while client.acked_seq < client.sent_seq and time.monotonic() < deadline:
        client.poll(100)
    result.put(("ok", client.acked_seq, client.params_version))
    client.close()


def test_transition_crosses_two_processes_byte_identical() -> None:
    server = LearnerServer("127.0.0.1", 0, 0, MAX)
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    child = ctx.Process(target=_actor_process, args=(server.transitions_port, server.params_port, result))
    child.start()
    try:
        params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "nan": np.array(np.nan), "b": np.bool_(False)}
        received = []
        deadline = time.monotonic() + 60
        while len(received) < 2 and time.monotonic() < deadline:
            for msg in server.recv(100):
                assert msg.sender == "actor-test" and msg.msg_type == "transitions"
                received.append(msg.body["transitions"][0])
                server.reply(msg.identity, "ack", {}, seq=msg.seq)
            # PUB/SUB joins late: keep publishing until the child has echoed the parameters.
            server.publish(TOPIC_PARAMS, "params", {"params": params}, seq=7)
        assert len(received) == 2, "the actor process did not deliver both messages"
        assert_identical(sample_transition(), received[0])
        assert_identical({k: np.asarray(v) for k, v in params.items()}, received[1])
        assert result.get(timeout=30) == ("ok", 2, 7)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
        server.close()
    assert child.exitcode == 0


def test_round_trip_in_process() -> None:
    tr = sample_transition()
    assert_identical(tr, unpack(pack(tr)))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xc1", "not valid msgpack"),
        (pack({"v": 1, "type": "transitions"})[:-3], "not valid msgpack"),
        (pack([1, 2]), "expected a map envelope"),
        (pack({"v": 99, "type": "transitions", "from": "a", "seq": 1, "body": {}}), "field 'v'"),
        (pack({"v": 1, "type": "evil", "from": "a", "seq": 1, "body": {}}), "field 'type'"),
        (pack({"v": 1, "type": "transitions", "from": 3, "seq": 1, "body": {}}), "field 'from'"),
        (pack({"v": 1, "type": "transitions", "from": "a", "seq": -1, "body": {}}), "field 'seq'"),
        (pack({"v": 1, "type": "transitions", "from": "a", "seq": 1}), "no 'body'"),
    ],
)
def test_malformed_envelopes_are_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        open_envelope(data, MAX, expect={"transitions"})


def _ext(header: list, body: bytes) -> bytes:
    import msgpack

    return msgpack.packb(msgpack.ExtType(1, msgpack.packb(header) + body))


@pytest.mark.parametrize(
    "data, reason",
    [
        (_ext(["<f4", [2, 2]], b"\x00" * 15), "needs 16 bytes, got 15"),
        (_ext(["<f4", [-1]], b""), "non-negative"),
        (_ext(["<f4", [2**62, 2**62]], b""), "needs"),
        (_ext(["|O", [1]], b"\x00" * 8), "dtype"),
        (_ext(["nonsense", [1]], b"\x00"), "not a numpy dtype"),
        (_ext(["<f4", "3"], b"\x00" * 12), "shape"),
        (_ext(["<f4", [1] * 9], b"\x00" * 4), "shape"),
    ],
)
def test_hostile_arrays_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        unpack(data)


def test_size_limit_and_unsendable_types() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        unpack(pack(np.zeros(1000)), max_bytes=100)
    with pytest.raises(TypeError, match="cannot encode"):
        pack({"x": object()})
    with pytest.raises(ProtocolError, match="cannot be sent"):
        pack(np.array(["a"], dtype=object))
    assert open_envelope(envelope("ping", "a", {}, 1), MAX)["type"] == "ping"


# ------------------------------------------------------------------------------------------- schema check


def _reach_like() -> dict:
    obs = {"state": {"tcp_pose": np.zeros(7, np.float32)}, "task": {"goal_pos": np.ones(3, np.float32)}}
    return {
        "observation": obs, "next_observation": obs, "action": np.zeros(7, np.float32),
        "executed_action": np.zeros(7, np.float32), "reward": 0.5, "terminated": False, "truncated": True,
        "episode": 3,
    }


def test_transition_matching_the_handshake_spec_passes_after_the_wire() -> None:
    from serl_stack.transport.protocol import check_spec, check_transition, make_spec

    t = _reach_like()
    spec = check_spec(unpack(pack(make_spec(t["observation"], t["action"]))))
    check_transition(unpack(pack(t)), spec)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda t: t.pop("reward"), "missing fields"),
        (lambda t: t["observation"]["state"].update(tcp_pose=np.zeros(6, np.float32)), "observation/state/tcp_pose"),
        (lambda t: t["observation"]["state"].update(tcp_pose=np.zeros(7, np.float64)), "expected <f4"),
        (lambda t: t["next_observation"].update(extra={"x": np.zeros(1)}), "do not match the handshake"),
        (lambda t: t.update(action=np.full(7, np.nan, np.float32)), "'action': holds NaN"),
        (lambda t: t.update(executed_action=[0.0] * 7), "'executed_action': expected an array"),
        (lambda t: t.update(reward=float("inf")), "'reward'"),
        (lambda t: t.update(reward=True), "'reward'"),
        (lambda t: t.update(terminated=1), "'terminated'"),
        (lambda t: t.update(episode=-1), "'episode'"),
    ],
)
def test_transition_not_matching_the_spec_is_rejected_naming_the_field(mutate, reason: str) -> None:
    import copy

    from serl_stack.transport.protocol import check_transition, make_spec

    t = _reach_like()
    spec = make_spec(t["observation"], t["action"])
    t = copy.deepcopy(t)
    mutate(t)
    with pytest.raises(ProtocolError, match=reason):
        check_transition(t, spec)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ([1], "expected a map"),
        ({"observation": {"a": ["<f4", [-1]]}, "action": ["<f4", [7]]}, "observation/a"),
        ({"observation": {"a": ["|O", [1]]}, "action": ["<f4", [7]]}, "dtype"),
        ({"observation": {}, "action": ["<f4"]}, "'action'"),
    ],
)
def test_bad_handshake_specs_are_rejected(spec, reason: str) -> None:
    from serl_stack.transport.protocol import check_spec

    with pytest.raises(ProtocolError, match=reason):
        check_spec(spec)
