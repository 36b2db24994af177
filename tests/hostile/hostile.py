#!/usr/bin/env python3
"""A hostile client of the Keyline directory and gateway.

    hostile.py attack --dir IP:PORT --dir-fp FP --gw IP:PORT --gw-fp FP
                      --account A --password P --number N --victim-number V
                      --office NUMBER --call-id ID --sources IP,IP,...
                      --report FILE
    hostile.py probe --dir IP:PORT --dir-fp FP --account A --password P
                     --target-account B --target-number N --seconds S

``attack`` runs every attack below, prints what each sent and what came
back, writes them all to the report (JSON) and exits 1 if any expected
refusal did not happen. ``probe`` looks up a number of a second account
every 10 ms and prints one line per look-up: the wall-clock time (ms since
the epoch) and its latency (microseconds).

The protocol is implemented in keyline_wire.py from docs/protocol.md alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import struct
import sys
import time
from typing import Any, Awaitable, Callable

import cbor2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keyline_wire import (  # noqa: E402
    EOF,
    MAX_MESSAGE,
    Close,
    Closed,
    Identity,
    Peer,
    Session,
    connect,
    encode,
    frame,
    open_session,
    pairing_code,
)

# Every code docs/protocol.md section 8 lists.
DIR_CODES = {
    "version", "unexpected", "unknown-kind", "not-logged-in", "bad-credentials",
    "rate-limited", "bad-token", "weak-password", "invalid-number", "not-your-number",
    "unknown-number", "unreachable", "forward-loop", "too-many-hops", "self-call",
    "no-such-call", "not-your-call", "bad-call-state", "no-relay", "relay-failed",
    "bad-address", "too-large", "quota-exceeded", "bad-mail", "no-such-mail", "storage",
}


def addr(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host, int(port)


def short(v: Any, n: int = 160) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


class Report:
    def __init__(self) -> None:
        self.results: list[dict] = []

    def add(self, target: str, name: str, sent: str, got: str, expected: str, ok: bool) -> None:
        self.results.append(
            {"target": target, "attack": name, "sent": sent, "got": got,
             "expected": expected, "ok": bool(ok)}
        )
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {target:9} {name}\n        sent: {short(sent, 200)}\n"
              f"        got:  {short(got, 300)}\n        want: {expected}", flush=True)

    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["ok"]]


class Attacker:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.dir = addr(a.dir)
        self.gw = addr(a.gw) if a.gw else None
        self.sources = a.sources.split(",") if a.sources else ["0.0.0.0"]
        self.me = Identity("mallory")
        self.rep = Report()

    def src(self, i: int) -> str:
        return self.sources[i % len(self.sources)]

    # --- helpers ------------------------------------------------------------

    async def raw_dir(self, local: str | None = None, ident: Identity | None = None) -> Peer:
        return await connect(self.dir, ident or self.me, self.a.dir_fp, local=local or self.src(0))

    async def raw_gw(self, local: str | None = None, ident: Identity | None = None) -> Peer:
        return await connect(self.gw, ident or Identity("station"), self.a.gw_fp,
                             local=local or self.src(0))

    async def logged_in(self, local: str | None = None) -> Session:
        return await open_session(self.dir, self.me, self.a.dir_fp, self.a.account,
                                  self.a.password, local=local or self.src(0))

    async def expect_close(self, target: str, name: str, peer: Peer, sent: str,
                           codes: set[int], within: float = 8.0) -> Close | None:
        """The peer must close the connection with one of ``codes``
        (application codes) within ``within`` seconds."""
        c = await peer.wait_closed(within)
        ok = c is not None and c.application and c.code in codes
        self.rep.add(target, name, sent, str(c) if c else f"still open after {within} s",
                     f"application close, code in {sorted(codes)}", ok)
        peer.abort()
        return c

    async def expect_error(self, name: str, s: Session, msg: dict, codes: set[str],
                           target: str = "directory", reply_kind: str = "error") -> dict | None:
        try:
            r = await s.request(msg)
        except (Closed, asyncio.TimeoutError) as e:
            self.rep.add(target, name, short(msg), f"no reply: {e!r}", f"{reply_kind} {sorted(codes)}", False)
            return None
        ok = r.get("t") == reply_kind and r.get("code") in codes and bool(r.get("message"))
        self.rep.add(target, name, short(msg), short(r, 300), f"{reply_kind} {sorted(codes)} with a message", ok)
        return r

    async def alive_after(self, name: str, s: Session, target: str = "directory") -> bool:
        """The session still answers a ping."""
        n = random.getrandbits(63)
        try:
            s.send({"t": "ping", "n": n})
            r = await s.reply(None, 5.0, ("pong",))
            while r.get("n") != n:  # the pong of an earlier ping
                r = await s.reply(None, 5.0, ("pong",))
            ok = r.get("n") == n
            got = short(r)
        except (Closed, asyncio.TimeoutError) as e:
            ok, got = False, repr(e)
        self.rep.add(target, f"{name}: session goes on", f"ping n={n}", got, "pong with the same n", ok)
        return ok

    # --- the directory ----------------------------------------------------

    async def dir_framing(self) -> None:
        T = "directory"
        # Random bytes as the first thing on the control stream: a complete
        # frame of garbage, and bytes whose prefix is whatever it is.
        for i in range(4):
            body = os.urandom(random.randint(16, 512))
            p = await self.raw_dir()
            sid = p.new_stream()
            data = frame(body) if i % 2 == 0 else os.urandom(4096)
            p.send_raw(sid, data)
            await self.expect_close(T, f"random bytes first ({len(data)} B)", p,
                                    data[:24].hex() + "...", {1})
        # Random bytes after a good hello and login.
        s = await self.logged_in()
        data = frame(os.urandom(300))
        s.send_raw(data)
        await self.expect_close(T, "random frame after login", s.peer, data[:24].hex() + "...", {1})
        # A truncated hello, then the stream finished.
        p = await self.raw_dir()
        sid = p.new_stream()
        h = encode({"t": "hello", "version": 1, "role": "terminal", "name": "x"})
        p.send_raw(sid, h[: len(h) // 2], fin=True)
        await self.expect_close(T, "truncated hello, stream finished", p, h[: len(h) // 2].hex(), {0, 1})
        # A truncated request after login, then the stream finished: the
        # session ends.
        s = await self.logged_in()
        m = encode({"t": "lookup", "req": 9, "number": "1001"})
        s.send_raw(m[:-3], fin=True)
        await self.expect_close(T, "truncated request after login, stream finished", s.peer,
                                m[:-3].hex(), {0, 1})
        # Length prefixes past the limit.
        for n in (MAX_MESSAGE + 1, 0xFFFFFFFF):
            p = await self.raw_dir()
            sid = p.new_stream()
            p.send_raw(sid, struct.pack(">I", n) + b"\xa0")
            await self.expect_close(T, f"length prefix {n} before hello", p, f"prefix {n:#x}", {1})
        s = await self.logged_in()
        s.send_raw(struct.pack(">I", 0x7FFFFFFF))
        await self.expect_close(T, "length prefix 2^31-1 after login", s.peer, "prefix 0x7fffffff", {1})
        # A hello of exactly the limit is read; one byte more is refused.
        for extra, want in ((0, "welcome"), (1, "close")):
            base = cbor2.dumps({"t": "hello", "version": 1, "role": "terminal", "name": ""})
            name = "n" * (MAX_MESSAGE - len(base) - 2 + extra)
            body = cbor2.dumps({"t": "hello", "version": 1, "role": "terminal", "name": name})
            p = await self.raw_dir()
            sid = p.new_stream()
            p.send_raw(sid, frame(body))
            if want == "welcome":
                try:
                    r = await p.recv(sid, 5.0)
                    got = short(r)
                    ok = isinstance(r, dict) and r.get("t") == "welcome"
                except (Closed, asyncio.TimeoutError) as e:
                    got, ok = repr(e), False
                self.rep.add(T, f"hello of exactly {len(body)} B", "hello, name padded", got, "welcome", ok)
                p.abort()
            else:
                await self.expect_close(T, f"hello of {len(body)} B", p, "hello, name padded", {1})

    async def dir_cbor(self) -> None:
        T = "directory"
        # Valid CBOR of an unknown kind: answered, the session goes on.
        s = await self.logged_in()
        for kind in ("steal-everything", "LOGIN", "", "hello\u0000", "\u202elogin"):
            m = {"t": kind, "req": 5, "numbers": ["1001"]}
            s.send(m)
            try:
                r = await s.reply(None, 5.0, ("error",))
                ok = r.get("code") == "unknown-kind" and r.get("req") is None
                got = short(r)
            except (Closed, asyncio.TimeoutError) as e:
                ok, got = False, repr(e)
            self.rep.add(T, f"unknown kind {kind!r}", short(m), got, "error unknown-kind, req null", ok)
        await self.alive_after("unknown kinds", s)
        # Kinds only the directory sends.
        for m in ({"t": "welcome", "version": 1, "observed": "1.2.3.4:5", "ttl_secs": 1, "policy": "relay"},
                  {"t": "ring", "call": 1, "from": "1001", "number": "1002", "ext": None, "dialled": "1002",
                   "via": [], "caller_fp": "0" * 64, "caller_candidates": []},
                  {"t": "ok", "req": 77}):
            s.send(m)
            try:
                r = await s.reply(None, 5.0, ("error",))
                ok = r.get("code") == "unexpected"
                got = short(r)
            except (Closed, asyncio.TimeoutError) as e:
                ok, got = False, repr(e)
            self.rep.add(T, f"directory-only kind {m['t']!r}", short(m), got, "error unexpected", ok)
        await self.alive_after("directory-only kinds", s)
        s.peer.abort()
        # Unknown kind and a login before hello.
        for m in ({"t": "steal-everything"}, {"t": "login", "req": 1, "account": "a", "password": "b"}):
            p = await self.raw_dir()
            p.send(p.new_stream(), m)
            await self.expect_close(T, f"{m['t']} before hello", p, short(m), {1})
        # Wrong hellos.
        for m, codes in (({"t": "hello", "version": 2, "role": "terminal", "name": None}, {2}),
                         ({"t": "hello", "version": 2**32, "role": "terminal", "name": None}, {1}),
                         ({"t": "hello", "version": "1", "role": "terminal", "name": None}, {1}),
                         ({"t": "hello", "version": 1, "role": "root", "name": None}, {1}),
                         ({"t": "hello", "version": 1, "role": "directory", "name": None}, {1}),
                         ({"t": "hello", "version": 1, "name": None}, {1})):
            p = await self.raw_dir()
            sid = p.new_stream()
            p.send(sid, m)
            if m["version"] == 2:
                try:
                    r = await p.recv(sid, 3.0)
                except (Closed, asyncio.TimeoutError) as e:
                    r = repr(e)
                ok = isinstance(r, dict) and r.get("code") == "version" and r.get("req") is None
                self.rep.add(T, "hello version 2: error first", short(m), short(r), "error version, req null", ok)
            await self.expect_close(T, f"hello {short(m, 70)}", p, short(m), codes)
        # Wrong field types and out-of-range integers after login.
        bad = [
            ({"t": "login", "req": "seven", "account": "a", "password": "b"}, "req as text"),
            ({"t": "ping", "n": -1}, "negative u64"),
            ({"t": "ping", "n": 1.5}, "float"),
            ({"t": "ping", "n": 2**64}, "2^64 (bignum tag)"),
            ({"t": "ping", "n": -(2**64) - 5}, "negative bignum"),
            ({"t": "ping"}, "missing field"),
            ({"t": "register", "req": 3, "numbers": "1001", "candidates": []}, "text for a list"),
            ({"t": "call", "req": 3, "number": "1001", "from": None, "candidates": [], "hops": 300,
              "media_fp": None}, "u8 out of range"),
            ({"t": "set-forward", "req": 3, "number": "3001", "rule": {"when": "sometimes", "to": "1"}},
             "unknown enum value"),
            ({"t": "leave-mail", "req": 3, "to": "1001", "from": None, "kind": "video", "len": 3},
             "unknown mail kind"),
            ({"t": 7}, "kind as an integer"),
            (["t", "ping"], "an array, not a map"),
        ]
        for m, what in bad:
            s = await self.logged_in()
            s.send_raw(frame(cbor2.dumps(m)))
            await self.expect_close(T, f"wrong type: {what}", s.peer, short(m), {1})
        for raw, what in ((b"\xa2\x61t\x64ping\x61n\x62\xff\xfe", "text string of invalid UTF-8"),
                          (b"\xbf\x61t\x64ping\x61n\x01\xff", "indefinite-length map"),
                          (b"\xa2\x61t\x64ping\x61n\x01\x00", "trailing bytes in the frame")):
            s = await self.logged_in()
            s.send_raw(frame(raw))
            c = await s.peer.wait_closed(3.0)
            if c is None:
                # Whatever ciborium accepts is accepted; then it must answer.
                await self.alive_after(f"{what} (accepted)", s)
                self.rep.add(T, what, raw.hex(), "accepted", "close code 1 or accepted", True)
                s.peer.abort()
            else:
                self.rep.add(T, what, raw.hex(), str(c), "close code 1 or accepted",
                             c.application and c.code == 1)
        # The largest u64 is a valid request id: echoed.
        s = await self.logged_in()
        r = await self.expect_error("req = 2^64-1 echoed", s,
                                    {"t": "lookup", "number": "no-such-number"}, {"unknown-number"})
        s.send({"t": "ping", "n": 2**64 - 1})
        try:
            r = await s.reply(None, 3.0, ("pong",))
            ok, got = r.get("n") == 2**64 - 1, short(r)
        except (Closed, asyncio.TimeoutError) as e:
            ok, got = False, repr(e)
        self.rep.add(T, "ping n = 2^64-1", "ping", got, "pong n = 2^64-1", ok)
        s.peer.abort()

    async def dir_nesting(self) -> None:
        T = "directory"
        for depth in (200, 5000, 60000):
            for where in ("name", "unknown-field", "unknown-kind"):
                nest = b"\x81" * depth + b"\x00"  # [[[ ... 0 ... ]]]
                if where == "name":
                    body = (b"\xa4\x61t\x65hello\x67version\x01\x64role\x68terminal\x64name" + nest)
                    s = None
                    p = await self.raw_dir()
                    p.send_raw(p.new_stream(), frame(body))
                    await self.expect_close(T, f"hello, name nested {depth} deep", p,
                                            f"{len(body)} B", {1})
                    continue
                s = await self.logged_in()
                if where == "unknown-field":
                    body = b"\xa3\x61t\x64ping\x61n\x01\x64junk" + nest
                else:
                    body = b"\xa2\x61t\x6bdeep-nested\x64junk" + nest
                if len(body) > 65536:
                    body = body[:65536]  # still within the limit, truncated item
                s.send_raw(frame(body))
                c = await s.peer.wait_closed(1.5)
                if c is None:
                    ok = await self.alive_after(f"{where} nested {depth} deep (accepted)", s)
                    got = "accepted, session goes on" if ok else "accepted, session dead"
                else:
                    ok, got = c.application and c.code == 1, str(c)
                self.rep.add(T, f"{where} nested {depth} deep", f"{len(body)} B", got,
                             "close code 1, or answered and the session goes on", ok)
                s.peer.abort()
        # Deeply nested maps too.
        s = await self.logged_in()
        body = b"\xa3\x61t\x64ping\x61n\x01\x61x" + b"\xa1\x61k" * 20000 + b"\x00"
        s.send_raw(frame(body))
        c = await s.peer.wait_closed(1.5)
        ok = (c is None and await self.alive_after("maps nested 20000 deep", s)) or (
            c is not None and c.application and c.code == 1)
        self.rep.add(T, "maps nested 20000 deep in an unknown field", f"{len(body)} B", str(c or "accepted"),
                     "close code 1, or answered", ok)
        s.peer.abort()

    async def dir_numbers(self) -> None:
        T = "directory"
        s = await self.logged_in()
        odd = [
            ("9" * 2000, {"invalid-number"}),
            ("\u202e1002", {"invalid-number", "unknown-number"}),
            ("10\u200b02", {"invalid-number", "unknown-number"}),
            ("１００２", {"invalid-number", "unknown-number", "unreachable"}),
            ("1\u0000002", {"invalid-number"}),
            ("12+34", {"invalid-number"}),
            ("a/b/c", {"invalid-number"}),
            ("", {"invalid-number"}),
            ("e\u0301" * 100, {"invalid-number"}),
            ("\U0001F4DE" * 70, {"invalid-number"}),
            ("\ufeff1002", {"invalid-number", "unknown-number"}),
            ("𝟏𝟎𝟎𝟐", {"invalid-number", "unknown-number"}),
            ("\ud7ff" * 3, {"invalid-number", "unknown-number"}),
            ("1" * 64 + "/" + "2" * 64, {"invalid-number"}),
        ]
        for n, codes in odd:
            r = await self.expect_error(f"look-up of {short(repr(n), 40)}", s,
                                        {"t": "lookup", "number": n}, codes)
            if r is not None and len(r.get("message", "")) > 400:
                self.rep.add(T, "error message quotes at most 32 characters", short(n),
                             f"message of {len(r['message'])} characters", "short message", False)
        # Calls to odd numbers: call-failed, never an error.
        for n in ("9" * 2000, "\u202e1002", ""):
            m = {"t": "call", "number": n, "from": None, "candidates": [], "hops": 0, "media_fp": None}
            await self.expect_error(f"call to {short(repr(n), 40)}", s, m,
                                    {"invalid-number", "unknown-number"}, reply_kind="call-failed")
        await self.alive_after("odd numbers", s)
        s.peer.abort()

    async def dir_state(self) -> None:
        T = "directory"
        victim, office, cid = self.a.victim_number, self.a.office, self.a.call_id
        # Before login.
        p = await self.raw_dir()
        s = Session(p)
        await s.hello()
        for m in ({"t": "register", "numbers": [], "candidates": []},
                  {"t": "lookup", "number": victim},
                  {"t": "unregister", "numbers": []},
                  {"t": "set-forward", "number": victim, "rule": None},
                  {"t": "ack-mail", "id": 1},
                  {"t": "change-password", "old": "x", "new": "yyyyyyyyyy"}):
            await self.expect_error(f"{m['t']} before login", s, m, {"not-logged-in"})
        await self.expect_error("call before login", s,
                                {"t": "call", "number": victim, "from": None, "candidates": [],
                                 "hops": 0, "media_fp": None}, {"not-logged-in"}, reply_kind="call-failed")
        for k in ("answer", "reject", "busy", "fallback"):
            await self.expect_error(f"{k} of the live call before login", s, {"t": k, "call": cid},
                                    {"not-logged-in", "no-such-call", "not-your-call"})
        await self.alive_after("wrong-state requests before login", s)
        # A resume with forged tokens.
        for tok in ("0" * 64, "zz", "a" * 5000):
            await self.expect_error(f"resume with a forged token ({len(tok)} chars)", s,
                                    {"t": "resume", "token": tok}, {"bad-token", "rate-limited"})
        p.abort()

        # Logged in as our own account: another account's numbers.
        s = await self.logged_in()
        await s.request({"t": "register", "numbers": [], "candidates": []})
        for m, codes, kind in (
            ({"t": "register", "numbers": [victim], "candidates": []}, {"not-your-number"}, "error"),
            ({"t": "unregister", "numbers": [victim]}, {"not-your-number"}, "error"),
            ({"t": "set-forward", "number": victim, "rule": {"when": "always", "to": self.a.number}},
             {"not-your-number"}, "error"),
            ({"t": "call", "number": office, "from": victim, "candidates": [], "hops": 0, "media_fp": None},
             {"not-your-number"}, "call-failed"),
            ({"t": "call", "number": office, "from": victim, "candidates": ["10.9.9.9:9"], "hops": 0,
              "media_fp": "ab" * 32}, {"not-your-number"}, "call-failed"),
            ({"t": "call", "number": office, "from": None, "candidates": [], "hops": 0,
              "media_fp": "zz"}, {"bad-address"}, "call-failed"),
            ({"t": "call", "number": office, "from": None, "candidates": [], "hops": 0,
              "media_fp": "ab" * 32}, {"bad-address"}, "call-failed"),
            ({"t": "call", "number": office, "from": None, "candidates": ["1.2.3.4:5"] * 9, "hops": 0,
              "media_fp": None}, {"bad-address"}, "call-failed"),
            ({"t": "call", "number": office, "from": None, "candidates": ["999.1.1.1:5"], "hops": 0,
              "media_fp": None}, {"bad-address"}, "call-failed"),
            ({"t": "call", "number": office, "from": None, "candidates": [], "hops": 5, "media_fp": None},
             {"too-many-hops"}, "call-failed"),
            ({"t": "call", "number": self.a.number, "from": None, "candidates": [], "hops": 0,
              "media_fp": None}, {"self-call"}, "call-failed"),
            ({"t": "register", "numbers": [self.a.number], "candidates": ["1.2.3.4:5"] * 9},
             {"bad-address"}, "error"),
            ({"t": "register", "numbers": ["\u202e" + self.a.number], "candidates": []},
             {"invalid-number"}, "error"),
        ):
            await self.expect_error(f"{m['t']} {short(m, 90)}", s, m, codes, reply_kind=kind)
        # Another account's live call, and a range of call ids.
        ids = sorted({cid, 0, 2**64 - 1, *range(max(0, cid - 20), cid + 20)})
        refusals = {"no-such-call", "not-your-call", "bad-call-state"}
        wrong = []
        for i in ids:
            for m in ({"t": "answer", "call": i, "media_fp": "ab" * 32, "candidates": ["10.9.9.9:9"]},
                      {"t": "reject", "call": i}, {"t": "busy", "call": i},
                      {"t": "redirect", "call": i, "number": self.a.number},
                      {"t": "transfer", "call": i, "number": self.a.number, "handoff": 12345},
                      {"t": "fallback", "call": i}):
                r = await s.request(m)
                if r.get("t") != "error" or r.get("code") not in refusals:
                    wrong.append((m, r))
            s.send({"t": "hangup", "call": i})
        self.rep.add(T, f"answer/reject/busy/redirect/transfer/fallback/hangup of {len(ids)} call ids "
                     f"(the live call {cid} among them)", f"{len(ids) * 7} requests",
                     f"{len(wrong)} not refused: {short(wrong[:2])}" if wrong else "all refused",
                     f"error {sorted(refusals)} for each", not wrong)
        await asyncio.sleep(0.3)
        hang = [n for n in s.notices if n.get("t") == "error"]
        self.rep.add(T, "hangup of another's call", f"hangup call {cid}",
                     short([n.get("code") for n in hang]),
                     "no change; at most error not-your-call, req null",
                     all(n.get("code") in ("not-your-call",) and n.get("req") is None for n in hang))
        s.notices.clear()
        # A forged hand-off value: the directory passes it on; the office
        # must ignore it (an ordinary call for OFFICE/EXT).
        for ext in ("201", "999"):
            m = {"t": "call", "number": f"{office}/{ext}", "from": None, "candidates": ["10.9.9.9:9"],
                 "hops": 0, "media_fp": None, "handoff": random.getrandbits(64)}
            try:
                r = await s.request(m)
                got = short(r)
                ok = r.get("t") in ("ringing", "call-failed")
                if r.get("t") == "ringing":
                    await asyncio.sleep(0.5)
                    s.send({"t": "hangup", "call": r["call"]})
            except (Closed, asyncio.TimeoutError) as e:
                got, ok = repr(e), False
            self.rep.add(T, f"call {office}/{ext} with a forged hand-off value", short(m), got,
                         "ringing or call-failed; the office treats it as an ordinary call", ok)
        await self.alive_after("wrong-state requests", s)
        # Mail: too large, and from another's number.
        p = s.peer
        for m, codes in (({"t": "leave-mail", "req": 1, "to": self.a.number, "from": None, "kind": "voice",
                           "len": 200 * 1024 * 1024}, {"too-large"}),
                         ({"t": "leave-mail", "req": 1, "to": office, "from": victim, "kind": "text",
                           "len": 3}, {"not-your-number"})):
            sid = p.new_stream()
            p.send(sid, m)
            try:
                r = await p.recv(sid, 5.0)
                ok, got = isinstance(r, dict) and r.get("code") in codes, short(r)
            except (Closed, asyncio.TimeoutError) as e:
                ok, got = False, repr(e)
            self.rep.add(T, f"leave-mail {short(m, 80)}", short(m), got, f"error {sorted(codes)}", ok)
        await self.alive_after("mail refusals", s)
        p.abort()

    async def dir_unread(self) -> list[Peer]:
        """Streams opened and never read, and a session that does not read
        its replies. Returns the connections, held open during the rest."""
        T = "directory"
        held = []
        s = await self.logged_in()
        p = s.peer
        # Mail uploads that announce a body and never send it; a fifth
        # stream is past the limit the directory set (4).
        for _ in range(3):
            sid = p.new_stream()
            p.send(sid, {"t": "leave-mail", "req": 9, "to": self.a.number, "from": None, "kind": "text",
                         "len": 4000})
            p.send_raw(sid, struct.pack(">I", 4000) + b"x" * 100)
        try:
            sid = p.new_stream()
            p.send_raw(sid, encode({"t": "ping", "n": 1}))
            over = "a fifth stream was queued by our stack (blocked by the directory's limit)"
        except Exception as e:  # aioquic may refuse to open it at all
            over = f"refused locally: {e!r}"
        self.rep.add(T, "three uploads left hanging, a fifth stream", "3 x leave-mail + 100 of 4000 B",
                     over, "the directory keeps the limit of 4 streams", True)
        await self.alive_after("uploads left hanging", s)
        held.append(p)
        # A session that never reads: tiny receive windows never raised.
        q = await connect(self.dir, self.me, self.a.dir_fp, local=self.src(0), window=2048)
        q._quic._write_connection_limits = lambda *a, **k: None
        q._quic._write_stream_limits = lambda *a, **k: None
        s2 = Session(q)
        await s2.hello()
        r = await s2.login(self.a.account, self.a.password)
        for i in range(3000):
            s2.send({"t": "lookup", "req": 100 + i, "number": self.a.victim_number})
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        c = await q.wait_closed(4.0)
        self.rep.add(T, "3000 look-ups, replies never read", "3000 lookup",
                     str(c) if c else "still open (the directory stopped reading)",
                     "closed with code 5, or held by flow control", c is None or c.code in (5, 1, 0))
        held.append(q)
        return held

    async def dir_idle(self, n: int, hello_only: int) -> None:
        """``n`` connections that never open a stream and ``hello_only``
        that say hello and never log in: the directory drops them (10 s
        without a stream; the login deadline)."""
        T = "directory"
        peers: list[Peer] = []
        refused: list[Close] = []
        failed = 0
        per_src = max(1, n // len(self.sources))

        async def one(i: int) -> None:
            nonlocal failed
            try:
                peers.append(await connect(self.dir, self.me, self.a.dir_fp, local=self.src(i), timeout=8))
            except Closed as e:
                refused.append(e.close)
            except Exception:
                failed += 1

        t0 = time.monotonic()
        # 40 new connections a second from each address: below the rate
        # limit, so every one should be admitted.
        tasks = []
        for k in range(per_src):
            for j in range(len(self.sources)):
                tasks.append(asyncio.ensure_future(one(k * len(self.sources) + j)))
            await asyncio.sleep(1 / 40)
        await asyncio.gather(*tasks)
        opened = time.monotonic() - t0
        self.rep.add(T, f"{len(tasks)} idle connections from {len(self.sources)} addresses",
                     f"{len(tasks)} handshakes in {opened:.1f} s",
                     f"{len(peers)} open, {len(refused)} refused, {failed} failed",
                     "all admitted (under every per-address limit)", len(peers) >= 0.98 * len(tasks))
        greeters: list[Session] = []
        for i in range(hello_only):
            try:
                s = Session(await connect(self.dir, self.me, self.a.dir_fp, local=self.src(i)))
                await s.hello()
                greeters.append(s)
            except Exception:
                pass
        closes = await asyncio.gather(*(p.wait_closed(14.0) for p in peers))
        codes: dict[str, int] = {}
        for c in closes:
            k = str(c) if c else "still open"
            codes[k] = codes.get(k, 0) + 1
        self.rep.add(T, "idle connections dropped", "no stream opened", short(codes, 300),
                     "every one closed within 14 s (no control stream within 10 s)",
                     all(c is not None for c in closes))
        lc = await asyncio.gather(*(g.peer.wait_closed(1.0) for g in greeters))
        self.rep.add(T, f"{len(greeters)} connections with hello and no login", "hello only",
                     short({str(c) for c in lc}), "closed with code 7 (no login within the deadline)",
                     len(greeters) > 0 and all(c is not None and c.code == 7 for c in lc))
        for p in peers:
            p.abort()
        for g in greeters:
            g.peer.abort()

    async def dir_handshake_burst(self, src: str, n: int) -> None:
        T = "directory"
        res = await asyncio.gather(*(connect(self.dir, self.me, self.a.dir_fp, local=src, timeout=6)
                                     for _ in range(n)), return_exceptions=True)
        ok = [r for r in res if isinstance(r, Peer)]
        ref = [r for r in res if isinstance(r, Closed)]
        other = [r for r in res if not isinstance(r, (Peer, Closed))]
        codes = {str(r.close) for r in ref}
        self.rep.add(T, f"{n} handshakes at once from {src}", f"{n} QUIC handshakes",
                     f"{len(ok)} accepted, {len(ref)} refused ({short(codes)}), {len(other)} other",
                     "the excess refused at the QUIC level (CONNECTION_REFUSED, 0x2)",
                     len(ref) > 0 and all(r.close.code == 2 and not r.close.application for r in ref))
        for p in ok:
            p.abort()

    async def dir_login_flood(self, srcs: list[str]) -> None:
        T = "directory"
        # Wrong passwords for one account from one address, pipelined.
        s = await open_session(self.dir, self.me, self.a.dir_fp, local=srcs[0])
        reqs = []
        for i in range(60):
            r = s.req()
            reqs.append(r)
            s.send({"t": "login", "req": r, "account": self.a.flood_account, "password": f"guess{i}"})
        replies = [await s.reply(r, 20.0) for r in reqs]
        codes = [r.get("code") for r in replies]
        bad = codes.count("bad-credentials")
        rl = [r for r in replies if r.get("code") == "rate-limited"]
        self.rep.add(T, "60 wrong passwords for one account, pipelined", "60 x login",
                     f"{bad} bad-credentials, {len(rl)} rate-limited (retry_after_ms "
                     f"{sorted({r.get('retry_after_ms') for r in rl})[:3]})",
                     "at most 5 checked, the rest rate-limited with retry_after_ms",
                     bad <= 5 and len(rl) == 60 - bad and all(r.get("retry_after_ms") for r in rl)
                     and all(c in DIR_CODES for c in codes))
        s.peer.abort()
        # Unknown accounts from one address, one fresh connection each.
        got: dict[str, int] = {}

        async def one(i: int) -> None:
            try:
                ss = await open_session(self.dir, self.me, self.a.dir_fp, local=srcs[1 % len(srcs)])
                r = await ss.login(f"nobody{i}-{random.getrandbits(32)}", "wrong", 20.0)
                got[r.get("code", r.get("t"))] = got.get(r.get("code", r.get("t")), 0) + 1
                ss.peer.abort()
            except Exception as e:
                got[type(e).__name__] = got.get(type(e).__name__, 0) + 1

        # In twenties: the directory lets 32 handshakes from one address be
        # in progress at once, and this is about logins, not handshakes.
        for k in range(0, 40, 20):
            await asyncio.gather(*(one(i) for i in range(k, k + 20)))
        self.rep.add(T, "40 connections logging in to unknown accounts", "40 x (handshake, hello, login)",
                     short(got), "bad-credentials for at most 20, then rate-limited",
                     got.get("bad-credentials", 0) <= 20 and got.get("rate-limited", 0) >= 20
                     and set(got) <= {"bad-credentials", "rate-limited"})

    # --- the gateway --------------------------------------------------------

    async def gw_attacks(self) -> None:
        T = "gateway"
        for i in range(3):
            p = await self.raw_gw()
            data = frame(os.urandom(200)) if i == 0 else os.urandom(3000)
            p.send_raw(p.new_stream(), data)
            await self.expect_close(T, f"random bytes first ({len(data)} B)", p, data[:24].hex(), {1})
        for n in (65537, 0xFFFFFFFF):
            p = await self.raw_gw()
            p.send_raw(p.new_stream(), struct.pack(">I", n))
            await self.expect_close(T, f"length prefix {n}", p, f"prefix {n:#x}", {1})
        p = await self.raw_gw()
        h = encode({"t": "hello", "version": 1, "role": "agent", "name": "x"})
        p.send_raw(p.new_stream(), h[:7], fin=True)
        await self.expect_close(T, "truncated hello, stream finished", p, h[:7].hex(), {0, 1})
        for m, codes in (({"t": "hello", "version": 9, "role": "agent", "name": None}, {2}),
                         ({"t": "hello", "version": 1, "role": "gateway", "name": None}, {1}),
                         ({"t": "hello", "version": 1, "role": "terminal", "name": None}, {1}),
                         ({"t": "hello", "version": "1", "role": "agent", "name": None}, {1}),
                         ({"t": "dial", "req": 1, "number": "201"}, {1}),
                         ({"t": "rob-the-bank"}, {1}),
                         ({"t": "media-hello", "call": 1, "token": "0" * 32}, {1}),
                         ({"t": "media-hello", "call": 2**64 - 1, "token": "x" * 5000}, {1})):
            p = await self.raw_gw()
            p.send(p.new_stream(), m)
            await self.expect_close(T, f"first message {short(m, 70)}", p, short(m), codes)
        for depth in (300, 60000):
            nest = b"\x81" * depth + b"\x00"
            body = b"\xa4\x61t\x65hello\x67version\x01\x64role\x65agent\x64name" + nest
            p = await self.raw_gw()
            p.send_raw(p.new_stream(), frame(body[:65536]))
            await self.expect_close(T, f"hello, name nested {depth} deep", p, f"{min(len(body), 65536)} B", {1})

        # A station waiting for approval: what it may not do.
        ident = Identity("station")
        p = await self.raw_gw(ident=ident)
        sid = p.new_stream()
        p.send(sid, {"t": "hello", "version": 1, "role": "agent", "name": "\u202eevil\u0007" * 40})
        try:
            r = await p.recv(sid, 5.0)
        except (Closed, asyncio.TimeoutError) as e:
            r = repr(e)
        want = pairing_code(ident.fingerprint, self.a.gw_fp)
        self.rep.add(T, "hello from an unknown station", "hello role agent",
                     short(r), f"pending with the code both fingerprints give ({want})",
                     isinstance(r, dict) and r.get("t") == "pending" and r.get("code") == want)
        for m, want_t, want_code in (({"t": "dial", "req": 4, "number": "201"}, "dial-failed", None),
                                     ({"t": "send-text", "req": 5, "to": "201", "body": "hi"}, "error",
                                      "not-approved"),
                                     ({"t": "answer", "call": 1}, "error", "not-approved"),
                                     ({"t": "open-the-doors"}, "error", "unknown-kind"),
                                     ({"t": "ping", "n": 42}, "pong", None)):
            p.send(sid, m)
            try:
                r = await p.recv(sid, 5.0)
                ok = isinstance(r, dict) and r.get("t") == want_t and (
                    want_code is None or r.get("code") == want_code)
                if m["t"] == "dial":
                    ok = ok and r.get("reason") == "not-allowed"
                got = short(r)
            except (Closed, asyncio.TimeoutError) as e:
                ok, got = False, repr(e)
            self.rep.add(T, f"waiting station sends {m['t']}", short(m), got,
                         f"{want_t} {want_code or ''}".strip(), ok)
        p.send_raw(sid, frame(os.urandom(100)))
        await self.expect_close(T, "waiting station sends garbage", p, "100 random bytes", {1})

    async def gw_enrol_flood(self, n: int, cap: int) -> None:
        T = "gateway"
        got: dict[str, int] = {}
        held: list[Peer] = []

        async def one(i: int) -> None:
            try:
                p = await self.raw_gw(local=self.src(i), ident=Identity(f"flood{i}"))
                sid = p.new_stream()
                p.send(sid, {"t": "hello", "version": 1, "role": "agent", "name": f"flood {i}"})
                r = await p.recv(sid, 10.0)
                k = r.get("t") if r.get("t") != "error" else "error " + r.get("code", "?")
                got[k] = got.get(k, 0) + 1
                held.append(p)
            except Exception as e:
                got[type(e).__name__] = got.get(type(e).__name__, 0) + 1

        for start in range(0, n, 25):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 25))))
        self.rep.add(T, f"enrolment flood: {n} hellos from new certificates", f"{n} x hello",
                     short(got), f"pending for at most {cap}, then error too-many-waiting",
                     got.get("pending", 0) <= cap and got.get("error too-many-waiting", 0) >= n - cap - 5
                     and got.get("pending", 0) + got.get("error too-many-waiting", 0) >= n - 5)
        for p in held:
            p.abort()

    async def gw_idle(self, n: int) -> None:
        T = "gateway"
        res = []
        for k in range(0, n, len(self.sources) * 2):
            res += await asyncio.gather(*(connect(self.gw, self.me, self.a.gw_fp, local=self.src(i), timeout=8)
                                          for i in range(k, min(n, k + len(self.sources) * 2))),
                                        return_exceptions=True)
            await asyncio.sleep(0.05)
        peers = [r for r in res if isinstance(r, Peer)]
        # The gateway closes each 10 s after its handshake; the margin is
        # for this client, which handles every connection in one Python
        # loop and falls behind on a busy machine (7 of 200 were seen
        # closed only after 14 s beside a full build).
        closes = await asyncio.gather(*(p.wait_closed(20.0) for p in peers))
        self.rep.add(T, f"{n} idle connections", "no stream opened",
                     f"{len(peers)} opened; closed: {sum(c is not None for c in closes)}",
                     "every one closed within 20 s (no control stream within 10 s)",
                     len(peers) > 0.9 * n and all(c is not None for c in closes))
        for p in peers:
            p.abort()

    # --- the whole run ------------------------------------------------------

    async def run(self) -> int:
        a = self.a
        t0 = time.monotonic()
        idle = asyncio.ensure_future(self.dir_idle(a.idle, 20))
        gidle = asyncio.ensure_future(self.gw_idle(a.gw_idle))
        steps: list[Callable[[], Awaitable[Any]]] = [
            self.dir_framing, self.dir_cbor, self.dir_nesting, self.dir_numbers, self.dir_state,
            self.gw_attacks,
        ]
        if a.only:
            steps = [getattr(self, n) for n in a.only.split(",")]
            idle.cancel()
            gidle.cancel()
        for step in steps:
            try:
                await step()
            except Exception as e:
                self.rep.add("?", step.__name__, "-", f"the attack itself failed: {e!r}", "no exception", False)
        held = []
        if a.only:
            return 1 if self.rep.failed() else 0
        try:
            held = await self.dir_unread()
        except Exception as e:
            self.rep.add("directory", "dir_unread", "-", f"the attack itself failed: {e!r}", "no exception", False)
        flood_srcs = a.flood_sources.split(",")
        for coro in (self.dir_login_flood(flood_srcs), self.gw_enrol_flood(a.enrol, a.max_pending),
                     self.dir_handshake_burst(flood_srcs[-1], 150)):
            try:
                await coro
            except Exception as e:
                self.rep.add("?", "flood", "-", f"the attack itself failed: {e!r}", "no exception", False)
        await asyncio.gather(idle, gidle, return_exceptions=True)
        for p in held:
            p.abort()
        await asyncio.sleep(0.5)
        fails = self.rep.failed()
        print(f"{len(self.rep.results)} checks, {len(fails)} failed, {time.monotonic() - t0:.1f} s", flush=True)
        if a.report:
            with open(a.report, "w") as f:
                json.dump({"results": self.rep.results, "failed": len(fails),
                           "seconds": round(time.monotonic() - t0, 1)}, f, indent=1)
        return 1 if fails else 0


async def probe(a: argparse.Namespace) -> int:
    """Legitimate look-ups, timed, until killed or ``seconds`` pass."""
    d = addr(a.dir)
    target = await open_session(d, Identity("target"), a.dir_fp, a.target_account, a.password)
    r = await target.request({"t": "register", "numbers": [a.target_number], "candidates": []})
    if r.get("t") != "registered":
        print(f"register failed: {r}", file=sys.stderr)
        return 1
    s = await open_session(d, Identity("probe"), a.dir_fp, a.account, a.password)
    # The collector's pauses would be the probe's, not the directory's.
    gc.collect()
    gc.disable()
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        r = await s.request({"t": "lookup", "number": a.target_number}, 10.0)
        us = (time.perf_counter() - t) * 1e6
        if r.get("t") != "found":
            print(f"look-up failed: {r}", file=sys.stderr)
            return 1
        print(f"{int(time.time() * 1000)} {int(us)}", flush=True)
        # Drain the expects the target is sent.
        while not target.peer.queue(target.sid).empty():
            target.peer.queue(target.sid).get_nowait()
        await asyncio.sleep(0.01)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["attack", "probe"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dir-fp", required=True)
    ap.add_argument("--gw")
    ap.add_argument("--gw-fp")
    ap.add_argument("--account", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--number", default="3001")
    ap.add_argument("--victim-number", default="1001")
    ap.add_argument("--office", default="2000")
    ap.add_argument("--flood-account", default="victim")
    ap.add_argument("--call-id", type=int, default=1)
    ap.add_argument("--sources", default="")
    ap.add_argument("--flood-sources", default="0.0.0.0")
    ap.add_argument("--idle", type=int, default=1600)
    ap.add_argument("--gw-idle", type=int, default=200)
    ap.add_argument("--enrol", type=int, default=80)
    ap.add_argument("--max-pending", type=int, default=50)
    ap.add_argument("--report")
    ap.add_argument("--only", help="run only these attack steps (comma-separated), for development")
    ap.add_argument("--target-account")
    ap.add_argument("--target-number")
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.mode == "probe":
        return asyncio.run(probe(a))
    return asyncio.run(Attacker(a).run())


if __name__ == "__main__":
    sys.exit(main())
