#!/usr/bin/env python3
"""Writes the plain-text seed corpora under fuzz/corpus/ (the signed seeds
come from `cargo test --lib fuzzing -- --ignored write_signed_seeds`).
Taken from the attack corpora of the unit and end-to-end tests."""
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


ROOT = "/tmp/dualtrust-fuzz-terminal/root"
argvs = [
    ["ls", "-la"], ["cat", "notes.txt"], ["git", "status"], ["grep", "-r", "TODO", "."],
    ["/bin/ls"], ["/usr/bin/ls"], ["rm", "-rf", "/"], ["rm", "-fr", "x"], ["rm", "-r", "-f", "x"],
    ["rm", "--recursive", "--force", "x"], ["/bin/rm", "x"], ["dd", "if=/dev/zero", "of=/dev/sda"],
    ["dd", "if=notes.txt", "of=x=etc/passwd"], ["kill", "-9", "1"], ["chmod", "-R", "777", "."],
    ["git", "reset", "--hard"], ["git", "clean", "-fdx"], ["cargo", "--version"], ["cargo", "build"],
    ["sh", "-c", "rm -rf /"], ["/bin/sh", "-c", "ls"], ["python3", "-c", "import os"],
    ["env", "rm", "-rf", "/"], ["sudo", "ls"], ["xargs", "rm"], ["nice", "rm", "-rf", "/"],
    ["find", ".", "-exec", "rm", "{}", ";"], ["find", ".", "-delete"],
    ["git", "-c", "core.pager=sh", "log"], ["git", "--upload-pack=evil", "status"],
    ["git", "grep", "-Osh", "x"], ["git", "grep", "--open-files-in-pager=sh", "x"],
    ["date", "-s", "2030-01-01"], ["date", "--set=2030-01-01"], ["ls\nrm", "-rf", "/"],
    ["timeout", "1", "rm", "x"], ["tar", "--checkpoint=1", "--checkpoint-action=exec=sh", "-cf", "x.tar", "."],
    ["rsync", "-e", "sh -c id", "a", "b"], ["sed", "-n", "1e id", "notes.txt"], ["'ls'"],
    ["ls; rm -rf /"], ["$(rm -rf /)"], ["curl", "http://x"], ["cat", "-é"], ["cat", "-éé/x"],
    ["cat", "-€"], ["ls", "-"], ["cat", "-é/../../../etc/passwd"], ["git", "init"],
    ["git", "add", "."], ["git", "commit", "-m", "x"], ["git", "switch", "-c", "topic"],
    ["git", "restore", "--staged", "a"], ["git", "clean", "-n"], ["git", "branch", "-d", "old"],
    ["chmod", "644", "a"], ["git", "checkout", "a.txt"], ["git", "push", "origin", "+main"],
    ["git", "branch", "-D", "old"], ["git", "stash", "drop"], ["chown", "-R", "x", "."],
    ["touch", "sub/new-file"], ["cp", "a", "sub/b"], ["ls", "-la", "sub"],
    ["find", ".", "-name", "*.rs"], ["cat", "/etc/shadow"], ["touch", "/tmp/owned"],
    ["cp", "a", "/etc/cron.d/x"], ["mv", "a", "../escape"], ["cat", "etc-link/passwd"],
    ["mkdir", "sub/../../out"], ["grep", "--file=/etc/shadow", "x"], ["grep", "-f/etc/shadow", "x"],
    ["find", "/", "-name", "x"], ["ls", "etc-link"], ["git", "diff", "--no-index", "/etc/shadow", "x"],
    ["cat", "../root-evil/secret"], ["cat", "sub/up/notes.txt"], ["cat", "sub/escape/x"],
    ["touch", "dangling"], ["cat", "--", "-etc/passwd"], ["cat", "x=etc/passwd"],
    ["cp", "-t..", "notes.txt"], ["sort", "-T..", "notes.txt"], ["mkdir", "-p", "a/../../x"],
    ["cat", ROOT + "/notes.txt"], ["cat", ROOT + "/../outside/x"], ["rm", ROOT + "/../outside"],
    ["rm", "etc-link/passwd"], ["shred", "dangling"], ["truncate", "-s0", "../x"],
    ["sort", "-S", "64K", "--compress-prog=mysh", "lines.txt"], ["date", "-f", "../../outside/shadow"],
    ["cp", "a.txt", ".git/config"], ["mv", ".git", "moved"], ["chmod", "-R", "777", "link/"],
    ["git", "log", "--format=%an %s"], ["git", "diff", "--", "a.txt"], ["stat", "-c%n", "sub"],
    ["du", "-X../x", "."], ["head", "-n1", "notes.txt"], ["wc", "-l", "notes.txt"],
]
for argv in argvs:
    write("terminal", "\0" + "\0".join(argv))
for cwd, argv in [("sub", ["ls"]), ("..", ["ls"]), ("/etc", ["ls"]), ("sub/up", ["cat", "notes.txt"]),
                  ("sub", ["cat", "../../x"]), ("sub/escape", ["ls"]), ("sub/deep", ["cat", "../../notes.txt"])]:
    write("terminal", cwd + "\0" + "\0".join(argv))

common_sql = [
    "SELECT * FROM customers", "select name, count(*) from orders join customers using (id) group by name",
    "WITH t AS (SELECT 1) SELECT * FROM t", "SELECT 1 UNION SELECT 2", "EXPLAIN SELECT 1",
    "INSERT INTO t VALUES (1)", "UPDATE t SET a = 1 WHERE id = 2", "DELETE FROM t WHERE id = 2",
    "CREATE TABLE x (a INT)", "DROP TABLE customers", "DELETE FROM customers",
    "UPDATE customers SET email = NULL", "ALTER TABLE customers ADD COLUMN x INT",
    "WITH gone AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM gone",
    "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
    "SELECT 1; DROP TABLE customers", "SELECT 1; COMMIT; DROP TABLE t", "SELEKT * FROM t", "   ", ";",
    "COMMIT", "BEGIN", "select 1 -- ; drop table t", "SELECT * INTO stolen FROM customers",
    "SELECT 1 AS a INTO stolen UNION SELECT 2", "SELECT * FROM customers FOR UPDATE",
    "SELECT * FROM (SELECT * FROM t FOR SHARE) q", "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1",
    "EXPLAIN (ANALYZE) SELECT 1", "SELECT (SELECT 1 FROM t WHERE a IN (SELECT b FROM u)) AS x",
    "SELECT CASE WHEN a THEN b ELSE c END FROM t ORDER BY 1 LIMIT 3 OFFSET 1",
    "VALUES (1, 'a'), (2, 'b')", "SELECT * FROM t WHERE a = ? AND b LIKE '%x%'",
]
pg_sql = [
    "END; DELETE FROM customers", "SET TRANSACTION READ WRITE", "SET default_transaction_read_only = off",
    "SELECT purge()", "PREPARE p AS DELETE FROM customers WHERE id = 1", "EXECUTE p",
    "DO $$ BEGIN DELETE FROM customers; END $$", "CALL wipe()",
    "COPY customers TO PROGRAM 'touch /tmp/dualtrust-pwned'", "COPY customers FROM '/etc/passwd'",
    "SELECT pg_read_file('/etc/passwd')", "SELECT lo_export(1, '/tmp/dualtrust-pwned')",
    "SELECT dblink_exec('dbname=test', 'DROP TABLE customers')",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT nextval('customers_id_seq')", "SELECT setval('customers_id_seq', 1000)", "SELECT pg_sleep(30)",
    'SELECT U&"\\0070g_read_file"(\'/etc/passwd\')', 'SELECT * FROM U&"\\0063ustomers" FOR UPDATE',
    "SELECT query_to_xml('DELETE FROM customers RETURNING 1', true, true, '')", "SET ROLE postgres",
    "RESET ALL", "LOCK TABLE customers", "CREATE TEMP TABLE t AS SELECT * FROM customers", "NOTIFY channel",
    "VACUUM customers", "TRUNCATE customers", "SELECT $$; DROP TABLE customers; --$$",
    "SELECT E'\\x27; DROP TABLE customers; --'", "SELECT pg_advisory_lock(1)", "SELECT pg_try_advisory_lock(1)",
    "SELECT pg_catalog.pg_advisory_lock(1)", 'SELECT "pg_advisory_lock"(1)', "SELECT * FROM pg_advisory_lock(1)",
    "SELECT * FROM LATERAL nextval('s')", "SELECT x FROM t, LATERAL set_config('a.b', 'c', false) AS x",
    "SELECT pg_notify('c', 'x')", "SELECT id, name FROM customers WHERE id = $1", "SELECT 1::int4 + '2'::int8",
    "SELECT ARRAY[1,2][1], (ROW(1,2)).f1, x->>'a' FROM t", "TABLE customers",
    "SELECT * FROM generate_series(1, 3) WITH ORDINALITY AS g(a, b)", "SELECT count(*) FILTER (WHERE a) OVER (PARTITION BY b) FROM t",
    "SELECT * FROM t1 FOR NO KEY UPDATE SKIP LOCKED", "SELECT 1 INTO TEMP t", "SELECT * FROM ONLY t",
    "SELECT lo_create(0)", "SELECT ts_stat('SELECT to_tsvector(''a'')')",
]
sqlite_sql = [
    "REPLACE INTO t VALUES (1)", "PRAGMA writable_schema = 1", "PRAGMA table_info('customers')",
    "ATTACH DATABASE '/tmp/x.db' AS x", "VACUUM", "SELECT load_extension('/tmp/evil.so')",
    "SELECT writefile('/tmp/x', 'data')", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; END",
    "SELECT * FROM (SELECT load_extension('x'))", "SELECT [load_extension]('x')", "SELECT `writefile`('/tmp/x', 'y')",
    "SELECT \"load_extension\"('x')", "SELECT * FROM pragma_table_info('t')", "SELECT json_extract(a, '$.b') FROM t",
    "SELECT typeof(1), randomblob(4), printf('%d', 1)", "SELECT * FROM [customers]", "SELECT `a` FROM `t`",
    "INSERT OR REPLACE INTO t VALUES (1)", "SELECT a FROM t WHERE a GLOB '*x*'", "DETACH x",
]
for sql in common_sql:
    write("sql", b"\x00" + sql.encode())
    write("sql", b"\x01" + sql.encode())
for sql in pg_sql:
    write("sql", b"\x01" + sql.encode())
for sql in sqlite_sql:
    write("sql", b"\x00" + sql.encode())

for tok in [
    "not.a.token", "", "a.b.c.d", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA", "eyJhbGciOiJFZERTQSIsImNyaXQiOlsiYjY0Il19.e30.",
    "eyJ0eXAiOiJKV1QifQ==.e30.x", "....", "e30.e30.e30",
]:
    write("token", b"\x01" + tok.encode())
for hdr in ["Bearer x.y.z", "bearer  x.y.z ", "Basic dXNlcjpwYXNz", "Bearer", "Bearer\tx", "Bearer x\nBearer y",
            "Token x.y.z", "BEARER e30.e30.e30"]:
    write("token", b"\x00" + hdr.encode())
for header, claims in [
    ('{"alg":"EdDSA","crit":["exp"]}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":4102444800}'),
    ('{"alg":"EdDSA","typ":"passport+jwt"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":4102444800}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":["x","dualtrust"],"sub":"a","exp":4102444800,"nbf":1}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":" ","exp":4102444800}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":1}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","sub":"b","exp":4102444800}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":4102444800,"iat":4102444800}'),
    ('{"alg":"HS256","alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":4102444800}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":4102444800.5}'),
    ('{"alg":"EdDSA"}', '{"iss":"dualtrust-dev","aud":"dualtrust","sub":"a","exp":"4102444800"}'),
]:
    write("token", b"\x02" + header.encode() + b"\x00" + claims.encode())
    write("token", b"\x06" + header.replace("EdDSA", "HS256").encode() + b"\x00" + claims.encode())

for st in ["rs1.AAAA.BBBB", "rs2.a2lk.AAAA.BBBB", "rs1..", "", "rs1.eyJ9.x", "garbage"]:
    write("request_state", b"\x00" + st.encode())
for lease, tool in [("lease-1", "terminal.execute"), ("", ""), ("é", "db.query"), ("a" * 200, "x")]:
    write("request_state", b"\x01" + lease.encode() + b"\x00" + tool.encode() + b"\x00\x07")

configs = [
    "", "mode = \"production\"\n", "[database]\nrow_cap = 3\n", "[database]\nrow_capp = 3\n",
    "[database]\nrow_cap = \"many\"\n", "[terminal]\ndefault_timeout_ms = 100000\n",
    "[terminal]\nroots = []\n", "[terminal]\npath = [\"relative\"]\n",
    "[terminal]\ndisable_layers = [\"seccomp\"]\n", "mode = \"production\"\n[terminal]\ndisable_layers = [\"seccomp\"]\n",
    "[http]\nallowed_origins = [\"*\"]\n", "[identity]\naudience = \" \"\n",
    "[identity]\nhs256_secret = \"short\"\n", "[identity]\njwks_url = \"http://example.invalid/jwks\"\n",
    "[store]\nurl = \"postgres://u:p@127.0.0.1/db\"\n", "[database]\nurl = \"sqlite://\"\n",
    "[database]\nurl = \"postgres://a@b/c\"\nread_url = \"mysql://x\"\n",
    "[scopes.implies]\n\"db:admin\" = [\"db:write\"]\n", "[[approvers]]\nid = \"alice\"\nkey = \"x\"\n",
    "[quorum]\nk = 0\n", "[limits]\nper_subject_per_minute = 0\n", "[passport]\ndefault_ttl_s = 999999999\n",
    "a = [1, 2\n", "[[x]]\n[x]\n", "[database]\nrow_cap = 18446744073709551615\n",
]
for c in configs:
    write("config", c)
for c, env in [("", "DUALTRUST_DATABASE__ROW_CAP=7"), ("[database]\nrow_cap = 3\n", "DUALTRUST_DATABASE__ROW_CAPP=7"),
               ("", "DUALTRUST_MODE=production"), ("", "DUALTRUST___X=1"), ("", "DUALTRUST_TERMINAL__ROOTS=[]"),
               ("", "DUALTRUST_IDENTITY__HS256_SECRET=0123456789abcdef0123456789abcdef"),
               ("", "DUALTRUST_TERMINAL=1\nDUALTRUST_TERMINAL__ALLOW=[\"ls\"]")]:
    write("config", c.encode() + b"\x00" + env.encode())
