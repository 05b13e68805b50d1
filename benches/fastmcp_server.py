"""What a team on the Python stack would deploy instead: a FastMCP server
with JWT bearer verification, exposing the same `bench.echo` tool.

    python fastmcp_server.py PORT PUBLIC_KEY_PEM ISSUER AUDIENCE

Started by tools/bench; prints `listening on http://127.0.0.1:PORT/mcp` on
stderr once it accepts.
"""

import sys
import threading
import socket
import time

from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier


def main() -> None:
    port, key_file, issuer, audience = sys.argv[1:5]
    with open(key_file, encoding="ascii") as f:
        public_key = f.read()
    auth = JWTVerifier(
        public_key=public_key,
        issuer=issuer,
        audience=audience,
        algorithm="RS256",
        required_scopes=["bench:echo"],
    )
    mcp = FastMCP("bench-fastmcp", auth=auth)

    @mcp.tool(name="bench.echo", description="Returns its text unchanged.")
    def echo(text: str) -> dict:
        return {"text": text}

    def announce() -> None:
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(port)), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        print(f"listening on http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)

    threading.Thread(target=announce, daemon=True).start()
    mcp.run(transport="http", host="127.0.0.1", port=int(port), log_level="warning", show_banner=False)


if __name__ == "__main__":
    main()
