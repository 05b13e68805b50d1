"""Smoke tests with the official Python MCP SDK (PyPI `mcp` 2.3) over both
transports, plus verification of dualtrust's artifacts with independent,
standard tools: PyJWT for passports (JWS/EdDSA), rfc8785 + cryptography for
receipts (RFC 8785 canonical JSON, SHA-256, Ed25519).

Needs DT_BINARY pointing at a built `dualtrust` binary.
"""

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time

import httpx2
import jwt
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

BIN = os.environ.get("DT_BINARY", "target/debug/dualtrust")
SCOPES = "db:read audit:read passport:issue terminal:execute"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture()
def data_dir():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        subprocess.run([BIN, "--data-dir", path, "init"], check=True, capture_output=True)
        yield path


def mint(data: str, scope: str = SCOPES) -> str:
    out = subprocess.run(
        [BIN, "--data-dir", data, "token", "--sub", "py-agent", "--scope", scope],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def jwks(data: str) -> dict:
    out = subprocess.run([BIN, "--data-dir", data, "keys"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def signs(key: dict, position: int, through: bool) -> bool:
    """Whether a published key's span covers a receipt's seq (`through`
    False) or a checkpoint's size (True): log_from <= position and below
    log_until (receipts) or up to it (checkpoints). No span: any."""
    until = key.get("log_until")
    return position >= key.get("log_from", 0) and (until is None or (position <= until if through else position < until))


def verify_receipt_independently(receipt: dict, keyset: dict) -> None:
    """RFC 8785 canonical body -> SHA-256 must equal `hash`; Ed25519 over the
    same bytes, by a key whose published span covers the receipt's seq."""
    canonical = rfc8785.dumps(receipt["body"])
    assert hashlib.sha256(canonical).hexdigest() == receipt["hash"]
    key = next(k for k in keyset["keys"] if k["kid"] == receipt["body"]["kid"])
    Ed25519PublicKey.from_public_bytes(b64url_decode(key["x"])).verify(b64url_decode(receipt["sig"]), canonical)
    assert signs(key, receipt["body"]["seq"], through=False), "key_retired"


def verify_checkpoint_independently(note: str, keyset: dict) -> None:
    """A C2SP signed note: some signature line by the origin's name whose key
    hash (SHA-256(name || 0x0A || 0x01 || key)[:4]) is a published key's, an
    Ed25519 signature over the body, by a key whose span covers the size."""
    text, signatures = note.split("\n\n", 1)
    origin, size = text.split("\n")[:2]
    for line in signatures.strip().split("\n"):
        name, blob = line.removeprefix("\u2014 ").split(" ")
        blob = base64.b64decode(blob)
        for key in keyset["keys"]:
            public = b64url_decode(key["x"])
            if name == origin and blob[:4] == hashlib.sha256(origin.encode() + b"\n\x01" + public).digest()[:4]:
                Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], (text + "\n").encode())
                assert signs(key, int(size), through=True), "checkpoint_key_retired"
                if key.get("log_until") == int(size):
                    # At its retirement size, only the root it was retired at.
                    root = base64.b64decode(text.split("\n")[2]).hex()
                    assert root == key["log_until_root"], "checkpoint_key_retired"
                return
    raise AssertionError("no signature by a published key")


def verify_log_proof_independently(receipt: dict, log: dict, keyset: dict) -> None:
    """RFC 9162 section 2.1.3.2 inclusion, recomputed here, against the C2SP
    signed-note checkpoint, whose Ed25519 signature is checked here too."""
    note = log["checkpoint"]
    text, signatures = note.split("\n\n", 1)
    origin, size, root_b64 = text.split("\n")[:3]
    assert int(size) == log["tree_size"]
    verify_checkpoint_independently(note, keyset)

    node = lambda left, right: hashlib.sha256(b"\x01" + left + right).digest()
    r = hashlib.sha256(b"\x00" + rfc8785.dumps(receipt["body"])).digest()
    fn, sn = log["leaf_index"], log["tree_size"] - 1
    assert fn == receipt["body"]["seq"]
    for p in (bytes.fromhex(h) for h in log["inclusion"]):
        assert sn != 0
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    assert sn == 0 and r == base64.b64decode(root_b64)


async def exercise(client: Client, keyset: dict, scope_refused_in_band: bool) -> str:
    tools = await client.list_tools()
    assert sorted(t.name for t in tools.tools) == ["audit.verify", "db.query", "db.schema", "passport.issue", "terminal.execute"]

    # The schema as resources, each read a receipt that verifies on its own.
    resources = await client.list_resources()
    assert [str(r.uri) for r in resources.resources][:2] == ["dualtrust://db/schema", "dualtrust://db/tables/customers"]
    read = await client.read_resource("dualtrust://db/tables/customers")
    table = json.loads(read.contents[0].text)
    assert [c["name"] for c in table["columns"]] == ["id", "name", "email", "country", "created_at"]
    outcome = read.meta["io.dualtrust/outcome"]
    assert outcome["receipt"]["body"]["tool"] == "db.schema"
    verify_receipt_independently(outcome["receipt"], keyset)
    verify_log_proof_independently(outcome["receipt"], outcome["log"], keyset)

    result = await client.call_tool("db.query", {"sql": "SELECT name FROM customers WHERE id = ?", "params": [1]})
    assert not result.is_error, result
    envelope = result.structured_content
    assert envelope["status"] == "ok"
    assert envelope["result"]["rows"] == [["Ada Lovelace"]]
    receipt = envelope["receipt"]
    verify_receipt_independently(receipt, keyset)
    verify_log_proof_independently(receipt, envelope["log"], keyset)

    verdict = await client.call_tool("audit.verify", {"receipt": receipt})
    assert verdict.structured_content["result"]["valid"] is True

    if scope_refused_in_band:
        # stdio has no status codes: the refusal is a tool error with a receipt.
        # (Over HTTP it is a 403 scope challenge, checked by the caller.)
        denied = await client.call_tool("db.query", {"sql": "DELETE FROM orders WHERE id = 1"})
        assert denied.is_error
        assert denied.structured_content["error"]["code"] == "insufficient_scope"
        verify_receipt_independently(denied.structured_content["receipt"], keyset)
        verify_log_proof_independently(denied.structured_content["receipt"], denied.structured_content["log"], keyset)

    issued = await client.call_tool("passport.issue", {"agent_id": "py-agent-1", "ttl_s": 60})
    assert not issued.is_error, issued
    passport = issued.structured_content["result"]["passport"]
    # A standard JOSE library verifies the passport with the published key alone.
    header = jwt.get_unverified_header(passport)
    key = next(k for k in keyset["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(passport, jwt.PyJWK(key).key, algorithms=["EdDSA"], issuer="dualtrust",
                        options={"require": ["exp", "iat", "sub", "jti"]})
    assert claims["sub"] == "py-agent-1"
    assert claims["exp"] - claims["iat"] == 60

    ran = await client.call_tool("terminal.execute", {"argv": ["echo", "hello", "from python"]})
    assert ran.structured_content["result"]["stdout"] == "hello from python\n"
    return client.session.protocol_version if client.session else "?"


def test_stdio(data_dir):
    keyset = jwks(data_dir)
    params = StdioServerParameters(
        command=BIN,
        args=["--data-dir", data_dir, "serve", "--stdio"],
        env={"DUALTRUST_TOKEN": mint(data_dir), "DUALTRUST_LOG": "warn", "PATH": os.environ.get("PATH", "")},
    )

    async def run():
        async with Client(params) as client:
            return await exercise(client, keyset, scope_refused_in_band=True)

    version = asyncio.run(run())
    print(f"stdio negotiated protocol {version}")


def start_http(data_dir):
    server = subprocess.Popen(
        [BIN, "--data-dir", data_dir, "serve", "--http", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "DUALTRUST_LOG": "warn"},
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        match = re.match(r"dualtrust listening on (\S+)", server.stderr.readline())
        if match:
            return server, match.group(1)
    server.kill()
    raise AssertionError("server did not start")


def test_held_call_round_trips_as_input_required_on_2026_07_28(data_dir):
    """A destructive call on protocol 2026-07-28: the server answers with an
    InputRequiredResult (elicitation + sealed requestState); the client's
    elicitation callback gets two approvers to sign; the retry runs it once."""
    config, keys = [], {}
    for approver in ("alice", "bob", "carol"):
        keys[approver] = os.path.join(data_dir, f"{approver}.key")
        out = subprocess.run([BIN, "--data-dir", data_dir, "approver-keygen", "--id", approver, "--out", keys[approver]],
                             check=True, capture_output=True, text=True)
        config.append(out.stdout)
    with open(os.path.join(data_dir, "dualtrust.toml"), "w") as f:
        f.write("\n".join(config) + "\n[quorum]\nk = 2\n")
    victim = os.path.join(data_dir, "workspace", "build")
    os.makedirs(os.path.join(victim, "deep"))
    server, url = start_http(data_dir)
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        lease = re.search(r"Lease ([0-9a-f]{32})", params.message).group(1)
        for approver in ("alice", "bob"):
            subprocess.run([BIN, "--data-dir", data_dir, "approve", "--lease", lease, "--approver", approver,
                            "--key", keys[approver], "--yes"], check=True, capture_output=True)
        return ElicitResult(action="accept", content={})

    try:
        token = mint(data_dir, "terminal:execute terminal:admin")

        async def run():
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with Client(streamable_http_client(url, http_client=http), elicitation_callback=on_elicit) as client:
                result = await client.call_tool("terminal.execute", {"argv": ["rm", "-rf", "build"]})
                return result, client.session.protocol_version

        result, version = asyncio.run(run())
        assert version == "2026-07-28"
        assert len(asked) == 1 and "deletes files recursively" in asked[0]
        assert not result.is_error, result
        envelope = result.structured_content
        assert envelope["status"] == "ok"
        assert [a["approver"] for a in envelope["receipt"]["body"]["outcome"]["approvals"]] == ["alice", "bob"]
        assert not os.path.exists(victim)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_streamable_http(data_dir):
    keyset = jwks(data_dir)
    server = subprocess.Popen(
        [BIN, "--data-dir", data_dir, "serve", "--http", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "DUALTRUST_LOG": "warn"},
    )
    try:
        url = None
        deadline = time.time() + 30
        while time.time() < deadline and url is None:
            line = server.stderr.readline()
            match = re.match(r"dualtrust listening on (\S+)", line)
            if match:
                url = match.group(1)
        assert url, "server did not start"
        token = mint(data_dir)

        async def run():
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with Client(streamable_http_client(url, http_client=http)) as client:
                return await exercise(client, keyset, scope_refused_in_band=False)

        version = asyncio.run(run())
        print(f"http negotiated protocol {version}")

        async def list_as(scope):
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {mint(data_dir, scope)}"})
            async with Client(streamable_http_client(url, http_client=http)) as client:
                tools = sorted(t.name for t in (await client.list_tools()).tools)
                resources = [str(r.uri) for r in (await client.list_resources()).resources]
                return tools, resources

        from mcp.client.streamable_http import streamable_http_client
        # Each token sees only what its scopes can use.
        tools, resources = asyncio.run(list_as("audit:read"))
        assert tools == ["audit.verify"] and resources == [], (tools, resources)
        tools, resources = asyncio.run(list_as("db:read"))
        assert tools == ["db.query", "db.schema"] and "dualtrust://db/schema" in resources, (tools, resources)

        async def unauthenticated():
            async with httpx2.AsyncClient() as http:
                return await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                       headers={"accept": "application/json, text/event-stream"})

        response = asyncio.run(unauthenticated())
        assert response.status_code == 401
        assert "resource_metadata=" in response.headers["www-authenticate"]

        async def write_with_read_token():
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
                return await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                  "params": {"name": "db.query",
                                                             "arguments": {"sql": "DELETE FROM orders WHERE id = 1"}}},
                                       headers={"accept": "application/json, text/event-stream",
                                                "mcp-protocol-version": "2026-07-28"})

        response = asyncio.run(write_with_read_token())
        assert response.status_code == 403
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="db:write"' in challenge, challenge
    finally:
        server.terminate()
        server.wait(timeout=10)
