"""CurveZMQ on the actor ↔ learner link: real sockets on 127.0.0.1, real CURVE handshakes and ZAP.

An unlisted key gets nothing through and no parameters, an actor cannot pose as another, the bytes on the wire
are ciphertext, and the key files round-trip with clear errors.
"""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from serl_stack import cli
from serl_stack.config import ConfigError, TransportConfig, load
from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.auth import (
    CurveClient,
    CurveServer,
    KeyFileError,
    curve_client_from_config,
    curve_server_from_config,
    generate_keypair,
    load_allowlist,
    load_keypair,
    load_public,
    read_certificate,
)
from serl_stack.transport.learner_server import TOPIC_PARAMS, Incoming, LearnerServer

MAX = 1 << 20
pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """Learner key, two authorized actors (actor-0 by metadata, actor-1 by file name), one unlisted key."""
    d = tmp_path / "keys"
    out = {}
    out["learner.pub"], out["learner.sec"] = generate_keypair(d, "learner")
    out["a0.pub"], out["a0.sec"] = generate_keypair(d, "a0", actor_id="actor-0")
    out["a1.pub"], out["a1.sec"] = generate_keypair(d, "actor-1")
    out["intruder.pub"], out["intruder.sec"] = generate_keypair(d, "intruder", actor_id="intruder")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(out["a0.pub"], allowed / "a0.key")
    shutil.copy(out["a1.pub"], allowed / "actor-1.key")
    out["allowed"] = allowed
    return out


@contextlib.contextmanager
def curve_learner(keys: dict[str, Path]) -> Iterator[tuple[LearnerServer, CurveServer]]:
    security = CurveServer(keys["learner.sec"], keys["allowed"])
    server = LearnerServer("127.0.0.1", 0, 0, MAX, security=security)
    try:
        yield server, security
    finally:
        server.close()
        security.close()


def actor(server: LearnerServer, actor_id: str, secret: Path | None, learner_pub: Path | None) -> ActorClient:
    security = CurveClient(secret, learner_pub) if secret is not None and learner_pub is not None else None
    return ActorClient("127.0.0.1", server.transitions_port, server.params_port, actor_id, MAX, security=security)


def serve(server: LearnerServer, clients: list[ActorClient], seconds: float, until=lambda: False) -> list[Incoming]:
    """Run learner and actors side by side: actors resend, the learner acks and keeps publishing parameters."""
    received: list[Incoming] = []
    t0 = time.monotonic()
    next_send = t0
    while time.monotonic() - t0 < seconds and not until():
        if time.monotonic() >= next_send:  # repeated sends: a handshake that is merely late still gets through
            for c in clients:
                c.send("transitions", {"transitions": [{"x": np.arange(3, dtype=np.float32)}]})
            next_send += 0.2
        for msg in server.recv(20):
            received.append(msg)
            server.reply(msg.identity, "ack", {}, seq=msg.seq)
        server.publish(TOPIC_PARAMS, "params", {"params": {"w": np.ones(2, dtype=np.float32)}}, seq=3)
        for c in clients:
            c.poll(0)
    return received


def test_unlisted_key_gets_nothing_while_authorized_actor_works(keys: dict[str, Path]) -> None:
    with curve_learner(keys) as (server, security):
        good = actor(server, "actor-0", keys["a0.sec"], keys["learner.pub"])
        intruder = actor(server, "intruder", keys["intruder.sec"], keys["learner.pub"])
        plain = actor(server, "actor-1", None, None)  # no CURVE at all
        # Listed key, but it expects a different learner key (an impostor learner, from its point of view).
        wrong_server = actor(server, "actor-1", keys["a1.sec"], keys["intruder.pub"])
        clients = [good, intruder, plain, wrong_server]
        try:
            t0 = time.monotonic()
            received = serve(server, clients, 2.0)
            elapsed = time.monotonic() - t0
        finally:
            for c in clients:
                c.close()
    assert elapsed >= 2.0
    assert received, "the authorized actor delivered nothing"
    assert {m.sender for m in received} == {"actor-0"}
    assert {m.user_id for m in received} == {"actor-0"}
    assert good.params_version == 3 and good.acked_seq > 0
    for c in (intruder, plain, wrong_server):
        assert c.params_body is None, f"{c.actor_id} received parameters"
        assert c.acked_seq == 0 and c.sent_seq > 0, f"{c.actor_id} got an ack"
    intruder_key = load_public(keys["intruder.pub"]).decode()
    assert security.denied[intruder_key] >= 1
    assert not server.rejected, server.rejected


def test_actor_posing_as_another_is_rejected(keys: dict[str, Path]) -> None:
    with curve_learner(keys) as (server, _):
        honest = actor(server, "actor-0", keys["a0.sec"], keys["learner.pub"])
        # actor-0's key (authenticated as actor-0) writing "actor-1" in the envelope's `from`.
        spoofer = actor(server, "actor-1", keys["a0.sec"], keys["learner.pub"])
        try:
            done = lambda: server.rejected["spoofed actor id"] >= 2 and honest.acked_seq > 0
            received = serve(server, [honest, spoofer], 10.0, until=done)
        finally:
            honest.close()
            spoofer.close()
    assert server.rejected["spoofed actor id"] >= 2
    assert set(server.rejected) == {"spoofed actor id"}
    assert received and all(m.sender == m.user_id == "actor-0" for m in received)
    assert spoofer.acked_seq == 0


class _Tap:
    """A TCP relay in front of the learner's ROUTER that records every byte actor → learner."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.captured = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.data is None:
                    down, _ = self._listener.accept()
                    up = socket.create_connection(("127.0.0.1", self._target))
                    sel.register(down, selectors.EVENT_READ, (up, True))
                    sel.register(up, selectors.EVENT_READ, (down, False))
                    continue
                peer, upstream = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (key.fileobj, peer):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(s)
                        s.close()
                    continue
                if upstream:
                    self.captured += data
                peer.sendall(data)
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_bytes_on_the_wire_are_encrypted(keys: dict[str, Path], curve: bool) -> None:
    marker = b"MARKER-7f3a9c-visible-if-not-encrypted"
    security = CurveServer(keys["learner.sec"], keys["allowed"]) if curve else None
    server = LearnerServer("127.0.0.1", 0, 0, MAX, security=security)
    tap = _Tap(server.transitions_port)
    client_sec = CurveClient(keys["a0.sec"], keys["learner.pub"]) if curve else None
    client = ActorClient("127.0.0.1", tap.port, server.params_port, "actor-0", MAX, security=client_sec)
    try:
        client.send("transitions", {"transitions": [{"blob": np.frombuffer(marker, dtype=np.uint8)}]})
        got: list[Incoming] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = server.recv(50)
    finally:
        client.close()
        tap.close()
        server.close()
        if security is not None:
            security.close()
    assert got and got[0].body["transitions"][0]["blob"].tobytes() == marker
    assert (marker in tap.captured) is not curve


def test_key_files_round_trip_and_permissions(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path / "new", "actor-3", actor_id="actor-3")
    assert (public.name, secret.name) == ("actor-3.key", "actor-3.key_secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    pub, sec = load_keypair(secret)
    assert zmq.curve_public(sec) == pub == load_public(public)
    # Readable by pyzmq's own loader (same ZPL format), and the public file carries no secret.
    assert zmq.auth.load_certificate(secret) == (pub, sec)
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert read_certificate(public).metadata == {"actor_id": "actor-3"}
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "new", "actor-3")
    with pytest.raises(KeyFileError, match="actor id 'bad id' is not valid"):
        generate_keypair(tmp_path / "new", "x", actor_id="bad id")


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(KeyFileError, match=f"not found: {missing}"):
        load_keypair(missing)
    public, secret = generate_keypair(tmp_path, "a")
    with pytest.raises(KeyFileError, match="holds no secret-key"):
        load_keypair(public)
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(KeyFileError, match="junk.key is not a ZeroMQ CURVE certificate"):
        load_public(junk)
    spliced = tmp_path / "spliced.key_secret"
    other_pub, _ = zmq.curve_keypair()
    spliced.write_text(secret.read_text().replace(load_public(public).decode(), other_pub.decode()))
    with pytest.raises(KeyFileError, match="does not belong to secret-key"):
        load_keypair(spliced)


def test_allowlist_binds_ids_and_refuses_duplicates(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    p0, _ = generate_keypair(keys, "a0", actor_id="actor-0")
    p1, _ = generate_keypair(keys, "b", actor_id="actor-0")
    legacy_pub, _ = zmq.auth.create_certificates(keys, "legacy")  # pyzmq's own: id from the file name
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(p0, allowed / "a0.key")
    shutil.copy(legacy_pub, allowed / "legacy.key")
    (allowed / "README.txt").write_text("ignored")
    assert load_allowlist(allowed) == {load_public(p0).decode(): "actor-0", load_public(legacy_pub).decode(): "legacy"}

    shutil.copy(p1, allowed / "b.key")
    with pytest.raises(KeyFileError, match=r"actor id 'actor-0' is bound to two keys: .*a0\.key and .*b\.key"):
        load_allowlist(allowed)
    (allowed / "b.key").unlink()
    shutil.copy(legacy_pub, allowed / "zz.key")
    with pytest.raises(KeyFileError, match=r"legacy\.key \('legacy'\) and .*zz\.key \('zz'\) hold the same public key"):
        load_allowlist(allowed)
    (allowed / "zz.key").unlink()
    shutil.copy(keys / "a0.key_secret", allowed / "a0.key_secret")
    with pytest.raises(KeyFileError, match="is a secret certificate"):
        load_allowlist(allowed)
    with pytest.raises(KeyFileError, match="allow-list folder not found"):
        load_allowlist(tmp_path / "absent")


def test_server_refuses_sockets_outside_its_context(keys: dict[str, Path]) -> None:
    with CurveServer(keys["learner.sec"], keys["allowed"]) as security:
        assert set(security.allowed.values()) == {"actor-0", "actor-1"}
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        try:
            with pytest.raises(ValueError, match="not created from CurveServer.context"):
                security.configure(sock)
        finally:
            sock.close(linger=0)


def test_config_fields_and_their_errors(keys: dict[str, Path]) -> None:
    assert curve_server_from_config(TransportConfig()) is None
    assert curve_client_from_config(TransportConfig()) is None
    cfg = load(None, ["transport.curve=true", f"transport.learner_secret_key={keys['learner.sec']}"])
    with pytest.raises(ConfigError, match="transport.allowed_actors_dir is empty"):
        curve_server_from_config(cfg.transport)
    with pytest.raises(ConfigError, match="transport.actor_secret_key is empty"):
        curve_client_from_config(cfg.transport)
    t = TransportConfig(curve=True, actor_secret_key=str(keys["a0.sec"]), learner_public_key="/nonexistent.key")
    with pytest.raises(ConfigError, match="transport.learner_public_key: CURVE certificate not found: /nonexistent"):
        curve_client_from_config(t)
    t = TransportConfig(curve=True, actor_secret_key=str(keys["a0.pub"]), learner_public_key=str(keys["learner.pub"]))
    with pytest.raises(ConfigError, match="transport.actor_secret_key: .* holds no secret-key"):
        curve_client_from_config(t)
    client = curve_client_from_config(
        TransportConfig(curve=True, actor_secret_key=str(keys["a0.sec"]), learner_public_key=str(keys["learner.pub"]))
    )
    assert client is not None and client.actor_id == "actor-0"
    sec, allowed = str(keys["learner.sec"]), str(keys["allowed"])
    server = curve_server_from_config(TransportConfig(curve=True, learner_secret_key=sec, allowed_actors_dir=allowed))
    assert server is not None
    server.close()


def test_serl_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert cli.main(["keys", "--out", str(out), "--name", "robot-a", "--actor-id", "actor-7"]) == 0
    text = capsys.readouterr().out
    assert str(out / "robot-a.key") in text and str(out / "robot-a.key_secret") in text
    assert "allowed_actors_dir" in text and "'actor-7'" in text
    assert (out / "robot-a.key_secret").stat().st_mode & 0o777 == 0o600
    assert read_certificate(out / "robot-a.key").metadata["actor_id"] == "actor-7"
    assert cli.main(["keys", "--out", str(out), "--name", "robot-a"]) == 2
    assert "already exists" in capsys.readouterr().err
