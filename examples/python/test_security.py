"""End-to-end check of keel.py's TLS, LOGIN and SECURITY_ADMIN against a real keeld:

    python3 examples/python/test_security.py

Makes a CA and a broker certificate (openssl CLI), a broker with `auth = "required"` and
TLS on 127.0.0.1 (port 0), an operator via `keeld add-admin`, then checks what
docs/PROTOCOL.md promises. Starts and stops its own keeld from target/release; removes
its temp dir. Exits 0 on success, non-zero with a message on any failure.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import keel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
# The broker to start: $KEELD (the integration tests pass theirs), else target/release.
KEELD = os.environ.get("KEELD") or os.path.join(ROOT, "target", "release", "keeld")
OPS_PASSWORD = "ops passphrase"


def run(args, **kwargs):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result


def make_certificates(tmp):
    ca_key, ca_crt = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.crt")
    key, csr, crt = (os.path.join(tmp, name) for name in ("broker.key", "broker.csr", "broker.crt"))
    ext = os.path.join(tmp, "broker.ext")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", "/CN=keel test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    with open(ext, "w") as file:
        file.write("basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n"
                   "subjectAltName=IP:127.0.0.1\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
         "-out", crt, "-days", "2", "-extfile", ext])
    return ca_crt, crt, key


class Broker:
    def __init__(self, tmp, config):
        self.stderr = open(os.path.join(tmp, "keeld.stderr"), "wb")
        self.process = subprocess.Popen([KEELD, "--config", config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=self.stderr, start_new_session=True)
        found = {}
        ready = threading.Event()

        def drain():  # keeps reading stdout so the broker never blocks on a full pipe
            for line in self.process.stdout:
                match = re.search(rb"keeld listening on (\S+):(\d+)", line)
                if match and not ready.is_set():
                    found["address"] = (match.group(1).decode(), int(match.group(2)))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        if not ready.wait(30) or "address" not in found:
            self.stop()
            raise RuntimeError("keeld did not report its address; stderr:\n" + self.log())
        self.host, self.port = found["address"]

    def log(self):
        if not self.stderr.closed:
            self.stderr.flush()
        with open(self.stderr.name, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(5)
        self.process.stdout.close()
        self.stderr.close()


def expect_error(name, function, *args):
    try:
        result = function(*args)
    except keel.KeelError as error:
        assert error.name == name, f"expected {name}, got {error}"
        return error
    raise AssertionError(f"expected ERROR {name}, got {result!r}")


def assert_closed(client):
    """The broker closed the connection: a read gets EOF (or a reset)."""
    client.socket.settimeout(5)
    try:
        data = client.socket.recv(1)
    except (ConnectionError, ssl.SSLError):
        return
    assert data == b"", f"the connection is still open ({data!r} arrived)"


def check(broker, ca):
    host, port = broker.host, broker.port
    tls = dict(cafile=ca)

    # The certificate is really verified: a client trusting another CA fails the handshake.
    other = ssl.create_default_context()  # system CAs only
    try:
        keel.Client(host, port, ssl_context=other).close()
        raise AssertionError("TLS handshake succeeded with an untrusting context")
    except ssl.SSLCertVerificationError:
        pass

    # Before LOGIN: PING is allowed, SEND is NOT_AUTHENTICATED and the connection closed.
    with keel.Client(host, port, **tls) as client:
        client.ping()
        expect_error("NOT_AUTHENTICATED", client.send, "secured", b"too early")
        assert_closed(client)
    print("ok: PING before LOGIN; SEND before LOGIN -> NOT_AUTHENTICATED, connection closed")

    # A wrong password: AUTHENTICATION_FAILED (a LoginError), connection closed.
    with keel.Client(host, port, **tls) as client:
        error = expect_error("AUTHENTICATION_FAILED", client.login_password, "ops", "not the passphrase")
        assert isinstance(error, keel.LoginError) and error.code == 21, error
        assert_closed(client)
    print(f"ok: wrong password -> {error}")

    # The operator logs in and administers.
    with keel.Client(host, port, **tls) as ops:
        assert ops.login_password("ops", OPS_PASSWORD) == "ops"
        expect_error("INVALID_ARGUMENT", ops.login_password, "ops", OPS_PASSWORD)  # a second LOGIN
        ops.ping()  # INVALID_ARGUMENT keeps the connection open
        added = ops.security_admin({"op": "user_add", "name": "orders-app", "password": "orders password"})
        assert "done" in added and isinstance(added.get("version"), int), added
        entry = {"principal": "orders-app", "effect": "allow", "resource": "topic", "pattern": "orders*",
                 "actions": ["publish"]}
        granted = ops.security_admin({"op": "acl_grant", "entry": entry})
        assert "done" in granted and granted["version"] > added["version"], granted
        token = ops.security_admin({"op": "token_create", "name": "orders-app"})
        assert re.fullmatch(r"keel_[0-9a-f]{16}_[0-9a-f]{64}", token["token"]), token
        users = ops.security_admin({"op": "user_list"})["users"]
        assert "orders-app" in users and "ops" in users, users
        assert entry in ops.security_admin({"op": "acl_list"})["acls"]
        tokens = ops.security_admin({"op": "token_list"})["tokens"]
        assert [t["name"] for t in tokens if t["id"] == token["token_id"]] == ["orders-app"], (tokens, token)
        expect_error("INVALID_ARGUMENT", ops.security_admin, {"op": "no_such_op"})
        expect_error("INVALID_ARGUMENT", ops.security_admin, {"op": "user_add", "name": "short", "password": "x"})
        ops.ping()
    print(f"ok: LOGIN ops; SECURITY_ADMIN user_add, acl_grant, token_create ({token['token_id']}), "
          "user_list, acl_list, token_list; bad commands -> INVALID_ARGUMENT")

    # The application logs in with its token: publish where granted, PERMISSION_DENIED elsewhere.
    with keel.Client(host, port, **tls) as app:
        assert app.login_token(token["token"]) == "orders-app"
        result = app.send("orders", b"granted", tags="sec")
        assert result["status"] == "SEND_OK", result
        denied = expect_error("PERMISSION_DENIED", app.send, "payments", b"not granted")
        app.ping()  # still open
        again = app.send("orders", b"still open")
        assert again["status"] == "SEND_OK" and again["queue_offset"] + 1 > 0, again
        expect_error("PERMISSION_DENIED", app.pull, "orders", result["queue_id"], 0)  # publish only
        expect_error("PERMISSION_DENIED", app.security_admin, {"op": "user_list"})
        app.ping()
    print(f"ok: token LOGIN as orders-app; SEND orders -> SEND_OK; SEND payments -> {denied}; still open")

    # The message really is stored: the operator reads it back.
    with keel.Client(host, port, **tls) as ops:
        ops.login_password("ops", OPS_PASSWORD)
        records = ops.pull("orders", result["queue_id"], result["queue_offset"])["records"]
        assert records and records[0]["payload"] == b"granted", records

    # The user's password works too (over TLS), and a revoked token is refused.
    with keel.Client(host, port, **tls) as app:
        assert app.login_password("orders-app", "orders password") == "orders-app"
    with keel.Client(host, port, **tls) as ops:
        ops.login_password("ops", OPS_PASSWORD)
        ops.security_admin({"op": "token_revoke", "id": token["token_id"]})
    with keel.Client(host, port, **tls) as app:
        expect_error("AUTHENTICATION_FAILED", app.login_token, token["token"])
    print("ok: password LOGIN as orders-app; revoked token -> AUTHENTICATION_FAILED")

    # Plaintext to the TLS port: a plaintext ERROR TLS_REQUIRED, then closed.
    with keel.Client(host, port) as plain:
        error = expect_error("TLS_REQUIRED", plain.ping)
        assert_closed(plain)
    print(f"ok: plaintext to the TLS port -> {error}")


def main():
    if not os.access(KEELD, os.X_OK):
        sys.exit(f"no broker binary at {KEELD}")
    tmp = tempfile.mkdtemp(prefix="keel-security-")
    broker = None
    try:
        ca, crt, key = make_certificates(tmp)
        config = os.path.join(tmp, "keeld.toml")
        with open(config, "w") as file:
            file.write(f'listen = "127.0.0.1:0"\n'
                       f'data_dir = "{tmp}/data"\n'
                       f'[security]\n'
                       f'auth = "required"\n'
                       f'tls_cert_file = "{crt}"\n'
                       f'tls_key_file = "{key}"\n')
        run([KEELD, "--config", config, "add-admin", "--user", "ops"], stdin=subprocess.DEVNULL,
            env=dict(os.environ, KEEL_PASSWORD=OPS_PASSWORD))
        broker = Broker(tmp, config)
        try:
            check(broker, ca)
        except BaseException:
            print("keeld stderr:\n" + broker.log(), file=sys.stderr)
            raise
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("python security client: ok")


if __name__ == "__main__":
    main()
