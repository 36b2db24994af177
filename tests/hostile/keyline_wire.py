"""A client of the Keyline directory protocol, written from docs/protocol.md
alone, on aioquic (not the QUIC stack the daemons use).

What it implements, by section of the document:

1. Transport: QUIC v1, TLS 1.3, ALPN ``keyline/1``, SNI ``keyline``, a
   self-signed ECDSA P-256 client certificate, the server pinned by the
   SHA-256 of its DER certificate (64 lower-case hex digits).
3. Framing: a 4-byte big-endian length, then one CBOR item; a map with text
   keys whose ``"t"`` names the kind.
4. Streams: the first bidirectional stream is the control stream; mail
   uploads on later bidirectional streams; mail arrives on unidirectional
   streams the directory opens.
5. The session: hello -> welcome, login -> logged-in, register ->
   registered, requests matched by ``req``.

It also speaks enough of the gateway's station protocol (the same framing
and transport, ``hello`` with role ``agent``) to be refused by it.

The raw side (``Peer.send_raw``) lets a test put any bytes on a stream.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = "keyline/1"
SERVER_NAME = "keyline"
MAX_MESSAGE = 65536
PROTOCOL_VERSION = 1
# Sentinel put in a stream's queue when the peer finished the stream.
EOF = object()


class Closed(Exception):
    """The connection is gone; ``code``/``reason`` as the peer closed it."""

    def __init__(self, close: "Close"):
        super().__init__(f"connection closed: {close}")
        self.close = close


@dataclass
class Close:
    code: int
    reason: str
    # None: an application close (CONNECTION_CLOSE 0x1d); a number: a
    # transport close and the frame type it names.
    frame_type: int | None

    @property
    def application(self) -> bool:
        return self.frame_type is None and self.reason != "Idle timeout"

    def __str__(self) -> str:
        kind = "application" if self.application else "transport"
        return f"{kind} close code {self.code} {self.reason!r}"


class Identity:
    """A self-signed ECDSA P-256 certificate and its key (section 1)."""

    def __init__(self, name: str = "keyline-hostile"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.fingerprint = fingerprint(self.cert)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def frame(body: bytes) -> bytes:
    """One frame: the body's length (u32, big-endian), then the body."""
    return struct.pack(">I", len(body)) + body


def encode(msg: dict) -> bytes:
    """A message as it goes on the wire. ``"t"`` must be the first key."""
    return frame(cbor2.dumps(msg))


def pairing_code(station_fp: str, gateway_fp: str) -> str:
    """The six digits a waiting station shows (ARCHITECTURE.md: a hash of
    both fingerprints)."""
    h = hashlib.sha256(b"keyline pairing v1\0" + station_fp.encode() + b"\0" + gateway_fp.encode())
    return f"{int.from_bytes(h.digest()[:4], 'big') % 1_000_000:06d}"


class Peer(QuicConnectionProtocol):
    """One QUIC connection; frames of every stream queued as they arrive."""

    def __init__(self, quic: QuicConnection, **kw: Any):
        super().__init__(quic, **kw)
        self.bufs: dict[int, bytearray] = {}
        self.queues: dict[int, asyncio.Queue] = {}
        self.uni_streams: asyncio.Queue = asyncio.Queue()
        self.close_info: asyncio.Future = asyncio.get_running_loop().create_future()
        self.bad_frames = 0

    def queue(self, sid: int) -> asyncio.Queue:
        q = self.queues.get(sid)
        if q is None:
            q = self.queues[sid] = asyncio.Queue()
            if sid % 4 == 3:  # server-initiated unidirectional
                self.uni_streams.put_nowait(sid)
        return q

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, StreamDataReceived):
            q = self.queue(event.stream_id)
            buf = self.bufs.setdefault(event.stream_id, bytearray())
            buf += event.data
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if n > 16 * 1024 * 1024:
                    self.bad_frames += 1
                    buf.clear()
                    break
                if len(buf) < 4 + n:
                    break
                q.put_nowait(bytes(buf[4 : 4 + n]))
                del buf[: 4 + n]
            if event.end_stream:
                q.put_nowait(EOF)
        elif isinstance(event, StreamReset):
            self.queue(event.stream_id).put_nowait(EOF)
        elif isinstance(event, ConnectionTerminated):
            if not self.close_info.done():
                self.close_info.set_result(
                    Close(event.error_code, event.reason_phrase, event.frame_type)
                )
            for q in self.queues.values():
                q.put_nowait(EOF)

    # --- sending ---------------------------------------------------------

    def new_stream(self) -> int:
        return self._quic.get_next_available_stream_id()

    def send_raw(self, sid: int, data: bytes, fin: bool = False) -> None:
        self._quic.send_stream_data(sid, data, end_stream=fin)
        self.transmit()

    def send(self, sid: int, msg: dict, fin: bool = False) -> None:
        self.send_raw(sid, encode(msg), fin)

    async def recv_frame(self, sid: int, timeout: float) -> bytes | object:
        """The next frame body on ``sid``, or EOF; raises Closed or
        asyncio.TimeoutError."""
        q = self.queue(sid)
        item = await asyncio.wait_for(q.get(), timeout)
        if item is EOF and self.close_info.done():
            raise Closed(self.close_info.result())
        return item

    async def recv(self, sid: int, timeout: float) -> dict | object:
        item = await self.recv_frame(sid, timeout)
        if item is EOF:
            return EOF
        return cbor2.loads(item)

    async def wait_closed(self, timeout: float) -> Close | None:
        """How the connection was closed, or None if it is still open."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.close_info), timeout)
        except asyncio.TimeoutError:
            return None

    def abort(self) -> None:
        """Close (code 0) and release the socket."""
        try:
            self.close(error_code=0, reason_phrase="client closed")
        except Exception:
            pass
        if self._transport is not None:
            asyncio.get_running_loop().call_later(0.3, self._transport.close)


def server_fingerprint(peer: Peer) -> str | None:
    cert = getattr(peer._quic.tls, "_peer_certificate", None)
    return fingerprint(cert) if cert is not None else None


async def connect(
    addr: tuple[str, int],
    ident: Identity,
    pin: str | None = None,
    local: str = "0.0.0.0",
    timeout: float = 5.0,
    window: int | None = None,
    idle: float = 30.0,
) -> Peer:
    """Connect and check the pin. ``window``: the receive window per stream
    (and twice it for the connection) the client advertises."""
    cfg = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=SERVER_NAME,
        idle_timeout=idle,
        verify_mode=ssl.CERT_NONE,
    )
    cfg.certificate = ident.cert
    cfg.private_key = ident.key
    if window is not None:
        cfg.max_stream_data = window
        cfg.max_data = 2 * window
    quic = QuicConnection(configuration=cfg)
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: Peer(quic), local_addr=(local, 0)
    )
    peer.connect(addr)
    try:
        await asyncio.wait_for(peer.wait_connected(), timeout)
    except (ConnectionError, asyncio.TimeoutError):
        transport.close()
        if peer.close_info.done():
            raise Closed(peer.close_info.result())
        raise
    got = server_fingerprint(peer)
    if pin is not None and got != pin:
        peer.abort()
        raise ConnectionError(f"server fingerprint {got} is not the pinned {pin}")
    return peer


class Session:
    """A directory session on the control stream (section 5)."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.sid = peer.new_stream()
        self.next_req = 1
        self.notices: list[dict] = []

    def req(self) -> int:
        r = self.next_req
        self.next_req += 1
        return r

    def send(self, msg: dict) -> None:
        self.peer.send(self.sid, msg)

    def send_raw(self, data: bytes, fin: bool = False) -> None:
        self.peer.send_raw(self.sid, data, fin)

    async def recv(self, timeout: float = 5.0) -> dict | object:
        return await self.peer.recv(self.sid, timeout)

    async def reply(self, req: int | None, timeout: float = 5.0, kinds: tuple = ()) -> dict:
        """The next message answering ``req`` (or, with req None, the next
        of ``kinds``); others are kept in ``notices``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError()
            m = await self.recv(left)
            if m is EOF:
                raise Closed(await self.peer.wait_closed(2.0) or Close(-1, "stream finished", None))
            if req is not None and m.get("req") == req:
                return m
            if req is None and m.get("t") in kinds:
                return m
            self.notices.append(m)

    async def request(self, msg: dict, timeout: float = 5.0) -> dict:
        r = self.req()
        body = {"t": msg["t"], "req": r}
        body.update({k: v for k, v in msg.items() if k != "t"})
        self.send(body)
        return await self.reply(r, timeout)

    async def hello(self, role: str = "terminal", name: str | None = "hostile") -> dict:
        self.send({"t": "hello", "version": PROTOCOL_VERSION, "role": role, "name": name})
        return await self.reply(None, 5.0, ("welcome", "error"))

    async def login(self, account: str, password: str, timeout: float = 10.0) -> dict:
        return await self.request({"t": "login", "account": account, "password": password}, timeout)


async def open_session(
    addr: tuple[str, int],
    ident: Identity,
    pin: str | None,
    account: str | None = None,
    password: str | None = None,
    local: str = "0.0.0.0",
    **kw: Any,
) -> Session:
    """Connect, hello, and (with an account) log in."""
    peer = await connect(addr, ident, pin, local=local, **kw)
    s = Session(peer)
    w = await s.hello()
    if w.get("t") != "welcome":
        raise RuntimeError(f"hello refused: {w}")
    if account is not None:
        r = await s.login(account, password or "")
        if r.get("t") != "logged-in":
            raise RuntimeError(f"login as {account} refused: {r}")
    return s
