"""CurveZMQ for the actor ↔ learner link: key files, the learner's allow-list, and socket configuration.

Owns: writing and reading ZeroMQ certificate files (the ZPL format of `zmq.auth.create_certificates`, so pyzmq
and CZMQ tools read them too), the allow-list that binds each actor id to exactly one public key, the learner's
ZAP handler (accepts only listed keys and hands the bound actor id to libzmq as the connection's User-Id), and
setting the CURVE options on sockets. Knows nothing of messages: `learner_server.py` compares the User-Id with
each envelope's `from`.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from serl_stack.config import ConfigError, TransportConfig

log = logging.getLogger(__name__)

ZAP_DOMAIN = "serl"
"""ZAP domain of the learner's sockets; the handler denies every other domain."""

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

# Ids and names end up in file names and in ZMTP metadata: keep them to a portable, printable alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_EXPECTED = "1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
_Z85_LEN = 40  # a 32-byte Curve25519 key in Z85
_warned_modes: set[Path] = set()


class KeyFileError(ValueError):
    """A certificate file or allow-list that is missing or malformed; the text names the file."""


@dataclass(frozen=True)
class Certificate:
    """One parsed certificate file."""

    path: Path
    public_key: bytes
    """Z85-encoded public key (40 bytes), the form pyzmq's curve_* socket options take."""
    secret_key: bytes | None
    """Z85-encoded secret key, or None for a public certificate."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The `metadata` section (e.g. `actor_id`)."""


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value):
        raise KeyFileError(f"{what} {value!r} is not valid; expected {_ID_EXPECTED}")
    return value


def _check_key(value: str, path: Path, name: str) -> bytes:
    try:
        raw = value.encode("ascii")
        ok = len(raw) == _Z85_LEN and len(z85.decode(raw)) == 32
    except (ValueError, KeyError):  # non-ASCII, bad length, or (KeyError) a character outside Z85's alphabet
        raw = b""
        ok = False
    if not ok:
        raise KeyFileError(f"{path}: {name} is not a Curve25519 key; expected {_Z85_LEN} Z85 characters")
    return raw


def read_certificate(path: str | os.PathLike[str]) -> Certificate:
    """Parse a certificate file (public or secret); raises `KeyFileError` naming the file on any problem."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise KeyFileError(f"CURVE certificate not found: {p} (expected a file written by `serl keys`)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read CURVE certificate {p}: {e}") from e
    section, values = "", {"metadata": {}, "curve": {}}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():  # ZPL: a section name starts at column 0, its properties are indented
            section = stripped
            continue
        key, sep, value = stripped.partition("=")
        if not sep or section not in values:
            continue
        values[section][key.strip()] = value.strip().strip("\"'")
    curve = values["curve"]
    if "public-key" not in curve:
        raise KeyFileError(
            f'{p} is not a ZeroMQ CURVE certificate: no `public-key = "..."` line under `curve` '
            "(expected a file written by `serl keys` or zmq.auth.create_certificates)"
        )
    public = _check_key(curve["public-key"], p, "public-key")
    secret = _check_key(curve["secret-key"], p, "secret-key") if "secret-key" in curve else None
    # A hand-edited or spliced file would otherwise fail only at handshake time, with no hint why.
    if secret is not None and zmq.curve_public(secret) != public:
        raise KeyFileError(f"{p}: public-key does not belong to secret-key; regenerate the pair with `serl keys`")
    return Certificate(p, public, secret, dict(values["metadata"]))


def _write_certificate(path: Path, cert_kind: str, public: bytes, secret: bytes | None, meta: dict[str, str]) -> None:
    lines = [
        f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by serl keys  ****",
        f"#   ZeroMQ CURVE {cert_kind} Certificate",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
        if secret
        else "#   Give this file to the learner (allow-list) or to the actors (learner's key).",
        "",
        "metadata",
        *(f'    {k} = "{v}"' for k, v in meta.items()),
        "curve",
        f'    public-key = "{public.decode()}"',
        *([f'    secret-key = "{secret.decode()}"'] if secret else []),
    ]
    # O_EXCL: never overwrite a key (that would silently lock out whoever holds the old one); the secret is
    # created 0600 from the first byte rather than chmod-ed after being written world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if secret:
            os.fchmod(f.fileno(), 0o600)  # the umask cannot widen it, but be exact regardless
        f.write("\n".join(lines) + "\n")


def generate_keypair(directory: str | os.PathLike[str], name: str, actor_id: str | None = None) -> tuple[Path, Path]:
    """Write `<name>.key` (public) and `<name>.key_secret` (mode 0600); returns (public_path, secret_path).

    `actor_id`, when given, is stored in both files' metadata and binds the key to that actor id on the learner
    (otherwise the public file's name, minus `.key`, is the actor id).
    """
    _check_id(name, "key name")
    meta = {"actor_id": _check_id(actor_id, "actor id")} if actor_id is not None else {}
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = d / f"{name}{PUBLIC_SUFFIX}", d / f"{name}{SECRET_SUFFIX}"
    for p in (public_path, secret_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key (delete it or pick another name)")
    public, secret = zmq.curve_keypair()
    _write_certificate(secret_path, "**Secret**", public, secret, meta)
    _write_certificate(public_path, "Public", public, None, meta)
    return public_path, secret_path


def load_keypair(secret_path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public_key, secret_key), Z85-encoded, from a secret certificate."""
    cert = read_certificate(secret_path)
    if cert.secret_key is None:
        raise KeyFileError(
            f"{cert.path} holds no secret-key; expected the `{SECRET_SUFFIX}` file, got a public certificate"
        )
    mode = cert.path.stat().st_mode
    if mode & 0o077 and cert.path not in _warned_modes:
        _warned_modes.add(cert.path)
        log.warning("secret certificate %s is readable by others (mode %o); expected 0600", cert.path, mode & 0o777)
    return cert.public_key, cert.secret_key


def load_public(public_path: str | os.PathLike[str]) -> bytes:
    """The Z85-encoded public key of a (public or secret) certificate."""
    return read_certificate(public_path).public_key


def load_allowlist(directory: str | os.PathLike[str]) -> dict[str, str]:
    """{public key (Z85 str): actor id} from the `*.key` files of `directory`.

    An actor's id is its certificate's `actor_id` metadata, or else the file name minus `.key`. Each id and each
    key may appear once: a duplicate is an error naming both files, since it would make "which actor sent this"
    ambiguous. A secret certificate in the folder is an error too (it has no business on the learner).
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise KeyFileError(f"allow-list folder not found: {d} (expected a folder of actors' public .key files)")
    by_key: dict[str, tuple[str, Path]] = {}
    by_id: dict[str, Path] = {}
    for path in sorted(d.iterdir()):
        if path.name.endswith(SECRET_SUFFIX):
            raise KeyFileError(
                f"{path} is a secret certificate; the allow-list holds only actors' public `{PUBLIC_SUFFIX}` files"
            )
        if not path.name.endswith(PUBLIC_SUFFIX):
            continue
        cert = read_certificate(path)
        if cert.secret_key is not None:
            raise KeyFileError(f"{path} contains a secret-key; copy the actor's public `{PUBLIC_SUFFIX}` file instead")
        actor_id = cert.metadata.get("actor_id") or path.name[: -len(PUBLIC_SUFFIX)]
        _check_id(actor_id, f"{path}: actor id")
        key = cert.public_key.decode()
        if actor_id in by_id:
            raise KeyFileError(f"actor id {actor_id!r} is bound to two keys: {by_id[actor_id]} and {path}")
        if key in by_key:
            raise KeyFileError(
                f"{by_key[key][1]} ({by_key[key][0]!r}) and {path} ({actor_id!r}) hold the same public key; "
                "one key must identify one actor"
            )
        by_id[actor_id] = path
        by_key[key] = (actor_id, path)
    return {key: actor_id for key, (actor_id, _) in by_key.items()}


class _AllowListAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, with the User-Id of a CURVE peer set to the actor id bound to its key."""

    def __init__(self, context: zmq.Context, server: CurveServer) -> None:
        super().__init__(context, log=log)
        self._server = server

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called right after `callback` accepted the key; `.get` because a reload may have dropped it since
        # (an empty User-Id then matches no envelope `from`, so the learner rejects everything it sends).
        return self._server.allowed.get(z85.encode(client_public_key).decode(), "")


class CurveServer:
    """Learner side: its keypair, the allow-list, and a ZAP handler in a context of its own.

    Sockets must be created from `self.context` (libzmq consults the ZAP handler of the socket's own context)
    and passed to `configure` before `bind`. Close the sockets before `close()`.
    """

    def __init__(self, secret_path: str | os.PathLike[str], allowed_actors_dir: str | os.PathLike[str]) -> None:
        self.public_key, self._secret_key = load_keypair(secret_path)
        self.allowed_actors_dir = Path(allowed_actors_dir).expanduser()
        self.allowed: dict[str, str] = load_allowlist(self.allowed_actors_dir)
        """{public key (Z85): actor id} of the actors that may connect."""
        if not self.allowed:
            log.warning("allow-list %s is empty: no actor can connect", self.allowed_actors_dir)
        self.denied: collections.Counter[str] = collections.Counter()
        """Refused connection attempts, by the peer's public key (Z85)."""
        # A private context: only one ZAP handler can exist per context, and a shared one (Context.instance())
        # would tie every learner in the process to the first one's allow-list.
        self.context = zmq.Context()
        self._auth = _AllowListAuthenticator(self.context, self)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP decision for a CURVE peer (called on the authenticator thread): is its key listed?"""
        key = client_key.decode("ascii", "replace")
        if key in self.allowed:
            return True
        if not self.denied[key]:  # once per key: a refused actor may retry its handshake
            log.warning("refused CURVE key %s (not in %s)", key, self.allowed_actors_dir)
        self.denied[key] += 1
        return False

    def reload_allowlist(self) -> int:
        """Re-read the allow-list folder (new connections see it; open ones stay up); returns the entry count."""
        self.allowed = load_allowlist(self.allowed_actors_dir)  # one reference swap: safe for the ZAP thread
        return len(self.allowed)

    def configure(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server authenticated by this allow-list (call before `bind`)."""
        if socket.context is not self.context:
            # In another context libzmq would find no ZAP handler and CURVE would accept any client key.
            raise ValueError("CurveServer.configure: socket was not created from CurveServer.context")
        socket.curve_server = True
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self.public_key
        socket.zap_domain = ZAP_DOMAIN.encode()
        # Fail closed if the ZAP handler is ever missing, instead of libzmq's legacy "encrypt, accept anyone".
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def close(self) -> None:
        """Stop the ZAP thread and end the context (sockets made from it should be closed first)."""
        self._auth.stop()
        self.context.destroy(linger=0)

    def __enter__(self) -> CurveServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CurveClient:
    """Actor side: its keypair and the learner's public key (which authenticates the learner to the actor)."""

    def __init__(self, secret_path: str | os.PathLike[str], learner_public_path: str | os.PathLike[str]) -> None:
        self.public_key, self._secret_key = load_keypair(secret_path)
        self.server_key = load_public(learner_public_path)
        self.actor_id: str | None = read_certificate(secret_path).metadata.get("actor_id")
        """The `actor_id` in the actor's certificate, if any (the learner's allow-list has the final word)."""

    def configure(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client of the learner (call before `connect`)."""
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self.public_key
        socket.curve_serverkey = self.server_key


def _path_field(tc: TransportConfig, name: str, what: str) -> str:
    value = getattr(tc, name)
    if not value:
        raise ConfigError(f"transport.{name} is empty; expected the path of {what} when transport.curve is true")
    return value


def curve_server_from_config(tc: TransportConfig) -> CurveServer | None:
    """The learner's `CurveServer` when `transport.curve` is on, else None; errors name the config field."""
    if not tc.curve:
        return None
    secret = _path_field(tc, "learner_secret_key", "the learner's secret certificate (`.key_secret`)")
    allowed = _path_field(tc, "allowed_actors_dir", "the folder of authorized actors' public `.key` files")
    try:
        load_keypair(secret)
    except KeyFileError as e:
        raise ConfigError(f"transport.learner_secret_key: {e}") from e
    try:
        return CurveServer(secret, allowed)
    except KeyFileError as e:
        raise ConfigError(f"transport.allowed_actors_dir: {e}") from e


def curve_client_from_config(tc: TransportConfig) -> CurveClient | None:
    """The actor's `CurveClient` when `transport.curve` is on, else None; errors name the config field."""
    if not tc.curve:
        return None
    secret = _path_field(tc, "actor_secret_key", "this actor's secret certificate (`.key_secret`)")
    public = _path_field(tc, "learner_public_key", "the learner's public certificate (`.key`)")
    try:
        load_keypair(secret)
    except KeyFileError as e:
        raise ConfigError(f"transport.actor_secret_key: {e}") from e
    try:
        return CurveClient(secret, public)
    except KeyFileError as e:
        raise ConfigError(f"transport.learner_public_key: {e}") from e
