"""Passkey approvals, verified independently: a software WebAuthn
authenticator written here (cryptography for ES256 and EdDSA, cbor2 for
CBOR) registers two approvers' passkeys over HTTP, an operator confirms
them, the official MCP client's elicitation callback gets both to sign a
held call, and every passkey approval in the exported log is re-checked
with nothing from dualtrust but its published approvers document.

Needs DT_BINARY pointing at a built `dualtrust` binary.
"""

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess

import cbor2
import httpx2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mcp import Client
from mcp_types import ElicitResult

from test_python_client import BIN, b64url_decode, data_dir, mint, start_http  # noqa: F401


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Authenticator:
    """What a browser hands back from navigator.credentials.create()/get()."""

    def __init__(self, alg: int, origin: str, rp_id: str = "localhost"):
        self.alg, self.origin, self.rp_id = alg, origin, rp_id
        self.key = ec.generate_private_key(ec.SECP256R1()) if alg == -7 else Ed25519PrivateKey.generate()
        self.credential_id = os.urandom(16)
        self.counter = 0

    def cose_key(self) -> bytes:
        if self.alg == -7:
            numbers = self.key.public_key().public_numbers()
            return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        return cbor2.dumps({1: 1, 3: -8, -1: 6, -2: self.key.public_key().public_bytes_raw()})

    def client_data(self, kind: str, challenge: bytes) -> bytes:
        return json.dumps({"type": kind, "challenge": b64url(challenge), "origin": self.origin, "crossOrigin": False}).encode()

    def register(self, challenge: bytes) -> dict:
        cid = self.credential_id
        auth_data = (hashlib.sha256(self.rp_id.encode()).digest() + bytes([0x45]) + self.counter.to_bytes(4, "big")
                     + bytes(16) + len(cid).to_bytes(2, "big") + cid + self.cose_key())
        return {
            "client_data_json": b64url(self.client_data("webauthn.create", challenge)),
            "attestation_object": b64url(cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})),
        }

    def assert_(self, statement: str) -> dict:
        self.counter += 1
        client_data = self.client_data("webauthn.get", hashlib.sha256(statement.encode()).digest())
        auth_data = hashlib.sha256(self.rp_id.encode()).digest() + bytes([0x05]) + self.counter.to_bytes(4, "big")
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256())) if self.alg == -7 else self.key.sign(signed)
        return {"credential_id": b64url(self.credential_id), "authenticator_data": b64url(auth_data),
                "client_data_json": b64url(client_data), "signature": b64url(signature)}


def origin_allowed(origins: list, origin: str) -> bool:
    ascii_digits = set("0123456789")
    for allowed in origins:
        if allowed.endswith(":*"):
            prefix = allowed[:-2]
            if origin.lower() == prefix.lower():
                return True
            rest = origin[len(prefix):] if origin.startswith(prefix) else None
            if rest and rest[0] == ":" and len(rest) > 1 and set(rest[1:]) <= ascii_digits:
                return True
        elif allowed.lower() == origin.lower():
            return True
    return False


def public_key_from_cose(cose: bytes):
    key = cbor2.loads(cose)
    if key[1] == 2 and key[-1] == 1 and key.get(3, -7) == -7:
        point = b"\x04" + key[-2] + key[-3]
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    if key[1] == 1 and key[-1] == 6 and key.get(3, -8) == -8:
        return Ed25519PublicKey.from_public_bytes(key[-2])
    raise AssertionError(f"unsupported COSE key {key}")


def verify_passkey_approvals_independently(receipts: list, document: dict) -> int:
    """Every passkey approval a call ran with: the statement rebuilt from
    the receipt, the challenge its SHA-256, an allowed origin, the RP id's
    hash, user presence and verification, and the signature over
    authenticator data || SHA-256(client data), by a credential the log
    confirmed earlier and did not revoke since (or the document pins)."""
    rp = document["relying_party"]
    pinned = {(a["id"], p["credential_id"]): p["public_key"] for a in document["approvers"]
              for p in a["passkeys"] if p["source"] == "config"}
    confirmed, checked = dict(pinned), 0
    for receipt in receipts:
        body = receipt["body"]
        outcome = body.get("outcome") or {}
        if body["decision"] == "passkey_confirmed":
            confirmed[(outcome["approver"], outcome["credential_id"])] = outcome["public_key"]
            continue
        if body["decision"] == "passkey_revoked":
            confirmed.pop((outcome["approver"], outcome["credential_id"]), None)
            continue
        if body["decision"] not in ("intent", "allowed", "error"):
            continue
        for approval in outcome.get("approvals") or []:
            assertion = approval.get("passkey")
            if assertion is None:
                continue
            statement = (f"dualtrust-approval-v1\nlease={body['lease']}\ntool={body['tool']}\n"
                         f"args_digest={body['args_digest']}\nsubject={body['subject']}\nexpires_at={approval['expires_at']}\n")
            client_data_bytes = b64url_decode(assertion["client_data_json"])
            client_data = json.loads(client_data_bytes)
            assert client_data["type"] == "webauthn.get"
            assert b64url_decode(client_data["challenge"]) == hashlib.sha256(statement.encode()).digest(), "challenge"
            assert origin_allowed(rp["origins"], client_data["origin"]), "origin"
            assert not client_data.get("crossOrigin") and "topOrigin" not in client_data
            auth_data = b64url_decode(assertion["authenticator_data"])
            assert auth_data[:32] == hashlib.sha256(rp["id"].encode()).digest(), "rp id"
            assert auth_data[32] & 0x05 == 0x05, "user present and verified"
            cose = confirmed[(approval["approver"], assertion["credential_id"])]
            key = public_key_from_cose(b64url_decode(cose))
            signed = auth_data + hashlib.sha256(client_data_bytes).digest()
            signature = b64url_decode(assertion["signature"])
            if isinstance(key, Ed25519PublicKey):
                key.verify(signature, signed)
            else:
                key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
            checked += 1
    return checked


def cli(data_dir: str, *args: str) -> str:
    return subprocess.run([BIN, "--data-dir", data_dir, *args], check=True, capture_output=True, text=True).stdout


def test_passkey_approvals_verify_with_independent_tools(data_dir):
    with open(os.path.join(data_dir, "dualtrust.toml"), "w") as f:
        f.write('[[approvers]]\nid = "alice"\nsubject = "alice@idp"\n'
                '[[approvers]]\nid = "bob"\nsubject = "bob@idp"\n'
                "[quorum]\nk = 2\npasskeys = 2\n")
    server, url = start_http(data_dir)
    base = url.removesuffix("/mcp")
    origin = base.replace("127.0.0.1", "localhost")
    tokens = {}
    for approver in ("alice", "bob"):
        out = subprocess.run([BIN, "--data-dir", data_dir, "token", "--sub", f"{approver}@idp", "--scope", "approvals:write"],
                             check=True, capture_output=True, text=True)
        tokens[approver] = out.stdout.strip()
    devices = {"alice": Authenticator(-7, origin), "bob": Authenticator(-8, origin)}
    http = httpx2.Client(base_url=base)

    def post(approver, path, body):
        return http.post(path, json=body, headers={"Authorization": f"Bearer {tokens[approver]}"})

    try:
        for approver, device in devices.items():
            options = post(approver, "/approvals/passkeys/challenge", {}).json()["public_key"]
            response = post(approver, "/approvals/passkeys",
                            {"challenge": options["challenge"], **device.register(b64url_decode(options["challenge"]))})
            assert response.status_code == 200, response.text
            cli(data_dir, "passkeys", "confirm", "--credential", b64url(device.credential_id))

        async def on_elicit(context, params):
            lease = re.search(r"Lease ([0-9a-f]{32})", params.message).group(1)
            for approver, device in devices.items():
                view = http.get(f"/approvals/{lease}", headers={"Authorization": f"Bearer {tokens[approver]}"}).json()
                answer = post(approver, "/approvals",
                              {"lease_id": lease, "approver_id": approver, "passkey": device.assert_(view["sign"])})
                assert answer.status_code == 200, answer.text
            return ElicitResult(action="accept", content={})

        token = mint(data_dir, "db:read db:admin")

        async def run():
            from mcp.client.streamable_http import streamable_http_client

            agent = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with Client(streamable_http_client(url, http_client=agent), elicitation_callback=on_elicit) as client:
                return await client.call_tool("db.query", {"sql": "DROP TABLE orders"})

        result = asyncio.run(run())
        assert not result.is_error, result
        assert result.structured_content["status"] == "ok"
        document = http.get("/.well-known/dualtrust-approvers.json").json()
    finally:
        server.terminate()
        server.wait(timeout=10)

    receipts = [json.loads(line) for line in cli(data_dir, "audit", "export").splitlines() if line.strip()]
    assert verify_passkey_approvals_independently(receipts, document) == 4, "two approvals, in intent and result"

    # One byte changed in one assertion's signature: the check fails.
    ran = next(r for r in receipts if r["body"]["decision"] == "allowed" and (r["body"].get("outcome") or {}).get("approvals"))
    signature = bytearray(b64url_decode(ran["body"]["outcome"]["approvals"][1]["passkey"]["signature"]))
    signature[-1] ^= 1
    ran["body"]["outcome"]["approvals"][1]["passkey"]["signature"] = b64url(bytes(signature))
    with pytest.raises(InvalidSignature):
        verify_passkey_approvals_independently(receipts, document)
