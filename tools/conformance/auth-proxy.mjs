// A loopback reverse proxy that adds `Authorization: Bearer <token>` to every
// request. The MCP conformance suite cannot send custom headers, and
// dualtrust has no way to switch authentication off, so the suite reaches
// the server the way an API gateway would: through a proxy holding a token.
// Everything else (Host, Origin, body, SSE streams) passes through untouched.
//
// usage: node auth-proxy.mjs LISTEN_PORT UPSTREAM_BASE_URL TOKEN
import http from 'node:http';

const [listenPort, upstream, token] = process.argv.slice(2);
if (!listenPort || !upstream || !token) {
  console.error('usage: node auth-proxy.mjs LISTEN_PORT UPSTREAM_BASE_URL TOKEN');
  process.exit(2);
}
const target = new URL(upstream);

const server = http.createServer((req, res) => {
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  const up = http.request(
    { hostname: target.hostname, port: target.port, path: req.url, method: req.method, headers },
    (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    },
  );
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.on('aborted', () => up.destroy());
  res.on('close', () => up.destroy());
  req.pipe(up);
});
server.listen(Number(listenPort), '127.0.0.1', () => {
  console.log(`auth proxy listening on http://127.0.0.1:${server.address().port}`);
});
