"""The known-answer vectors in tests/vectors, checked with code that shares
nothing with the server: rfc8785, hashlib and cryptography. The Rust side
(src/vectors.rs) checks the same files, so the two agree on every format."""

import hashlib
import json
import pathlib

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from test_python_client import (
    b64url_decode,
    verify_checkpoint_independently,
    verify_log_proof_independently,
    verify_receipt_independently,
)

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "vectors"
GENESIS = "0" * 64


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_args_digest_is_sha256_of_the_canonical_tool_and_args():
    for case in load("args_digest.json")["cases"]:
        canonical = rfc8785.dumps({"tool": case["tool"], "args": case["args"]})
        assert canonical == case["canonical"].encode()
        assert hashlib.sha256(canonical).hexdigest() == case["digest"]


def statement(lease: dict) -> bytes:
    return (
        "dualtrust-approval-v1\n"
        f"lease={lease['id']}\ntool={lease['tool']}\nargs_digest={lease['args_digest']}\n"
        f"subject={lease['subject']}\nexpires_at={lease['expires_at']}\n"
    ).encode()


def test_an_approval_signs_exactly_one_lease():
    vectors = load("approval_statement.json")
    key = Ed25519PublicKey.from_public_bytes(b64url_decode(vectors["approver_public_key"]))
    assert statement(vectors["lease"]) == vectors["statement"].encode()
    key.verify(b64url_decode(vectors["signature"]), statement(vectors["lease"]))
    for case in vectors["refused"]:
        with pytest.raises(InvalidSignature):
            key.verify(b64url_decode(case["signature"]), statement(case["lease"]))


def test_a_rejection_signs_the_lease_and_the_reason_under_its_own_domain():
    vectors = load("approval_statement.json")
    key = Ed25519PublicKey.from_public_bytes(b64url_decode(vectors["approver_public_key"]))
    rejection = vectors["rejection"]
    lease = vectors["lease"]
    expected = (
        "dualtrust-rejection-v1\n"
        f"lease={lease['id']}\ntool={lease['tool']}\nargs_digest={lease['args_digest']}\n"
        f"subject={lease['subject']}\nexpires_at={lease['expires_at']}\nreason={rejection['reason']}\n"
    ).encode()
    assert expected == rejection["statement"].encode()
    key.verify(b64url_decode(rejection["signature"]), expected)
    with pytest.raises(InvalidSignature):
        key.verify(b64url_decode(rejection["signature"]), statement(lease))


def verify_chain(receipts: list, keyset: dict) -> None:
    prev = GENESIS
    for seq, receipt in enumerate(receipts):
        verify_receipt_independently(receipt, keyset)
        assert receipt["body"]["seq"] == seq, f"seq at {seq}"
        assert receipt["body"]["prev"] == prev, f"chain at {seq}"
        prev = receipt["hash"]


def test_receipts_chain_and_prove_their_inclusion_under_a_signed_checkpoint():
    vectors = load("receipts.json")
    keyset = {"keys": [vectors["server_public_key"]]}
    verify_chain(vectors["receipts"], keyset)
    for receipt, proof in zip(vectors["receipts"], vectors["proofs"]):
        verify_log_proof_independently(receipt, proof, keyset)

    refused = vectors["refused"]
    with pytest.raises(AssertionError):
        verify_receipt_independently(refused["edited_body"]["receipt"], keyset)
    with pytest.raises(InvalidSignature):
        verify_receipt_independently(refused["signed_by_another_key"]["receipt"], keyset)
    with pytest.raises(AssertionError, match="chain at 3"):
        verify_chain(refused["broken_chain"]["receipts"], keyset)
    wrong = refused["wrong_inclusion_path"]
    with pytest.raises(AssertionError):
        verify_log_proof_independently(wrong["receipt"], wrong["proof"], keyset)
    # The size matches the forged note, so its signature is what fails.
    forged = dict(vectors["proofs"][0], checkpoint=refused["checkpoint_with_another_size"]["checkpoint"], tree_size=6)
    with pytest.raises(InvalidSignature):
        verify_log_proof_independently(vectors["receipts"][0], forged, keyset)


def rfc6962_root(leaves: list) -> bytes:
    """MTH (RFC 6962 section 2.1) of leaf hashes, recomputed here."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:])).digest()


def verify_rotated_log(receipts: list, keyset: dict) -> None:
    verify_chain(receipts, keyset)
    leaves = [hashlib.sha256(b"\x00" + rfc8785.dumps(r["body"])).digest() for r in receipts]
    for key in keyset["keys"]:
        until = key.get("log_until")
        if until is not None and until <= len(leaves) and "log_until_root" in key:
            assert rfc6962_root(leaves[:until]).hex() == key["log_until_root"], "retirement_root"


def test_a_rotated_log_verifies_and_its_retired_key_signs_nothing_past_its_span():
    vectors = load("rotation.json")
    keyset = vectors["jwks"]
    assert [k.get("log_until") for k in keyset["keys"]] == [3, None]
    verify_rotated_log(vectors["receipts"], keyset)
    for receipt, proof in zip(vectors["receipts"], vectors["proofs"]):
        verify_log_proof_independently(receipt, proof, keyset)

    refused = vectors["refused"]
    with pytest.raises(AssertionError, match="key_retired"):
        verify_rotated_log(refused["receipt_by_the_retired_key_after_retirement"]["receipts"], keyset)
    with pytest.raises(AssertionError, match="retirement_root"):
        verify_rotated_log(refused["history_rewritten_with_the_retired_key"]["receipts"], keyset)
    with pytest.raises(AssertionError, match="checkpoint_key_retired"):
        verify_checkpoint_independently(refused["checkpoint_by_the_retired_key_past_retirement"]["checkpoint"], keyset)
