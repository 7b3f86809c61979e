"""A minimal keel client in plain Python (standard library only), written from
docs/PROTOCOL.md alone. It pipelines nothing: one request, one reply. Enough to send,
consume, commit and inspect; a starting point for a client in another language.

    import keel
    with keel.Client("127.0.0.1", 10911) as client:
        result = client.send("orders", b"hello", tags="TagA")
        records = client.pull("orders", result["queue_id"], 0, wait_ms=1000)["records"]

With security (docs/PROTOCOL.md, "Security: TLS, login, permissions"):

    with keel.Client("127.0.0.1", 10911, cafile="ca.crt") as client:   # TLS, server verified
        client.login_password("ops", "passphrase")                       # or login_token(token)
        client.security_admin({"op": "user_list"})                       # -> {"users": [...], ...}
"""

import json
import socket
import ssl
import struct
import time

VERSION = 2
FLAG_ONEWAY = 1
KINDS = {
    "PING": 0x01, "SEND": 0x02, "PULL": 0x03, "COMMIT_OFFSET": 0x04, "QUERY_OFFSET": 0x05,
    "CREATE_TOPIC": 0x06, "LIST_TOPICS": 0x07, "STATS": 0x08, "SEND_BATCH": 0x09,
    "PONG": 0x81, "SEND_RESULT": 0x82, "PULL_RESULT": 0x83, "COMMIT_OFFSET_OK": 0x84,
    "OFFSET": 0x85, "TOPIC_CREATED": 0x86, "TOPIC_LIST": 0x87, "STATS_RESULT": 0x88,
    "SEND_BATCH_RESULT": 0x89, "ERROR": 0xFF,
    "LOGIN": 0x12, "SECURITY_ADMIN": 0x13, "LOGIN_OK": 0x8F, "SECURITY_RESULT": 0x90,
}
LOGIN_PASSWORD = 1
LOGIN_TOKEN = 2
ERROR_NAMES = {
    1: "MALFORMED_FRAME", 2: "UNSUPPORTED_VERSION", 3: "UNKNOWN_KIND", 4: "FRAME_TOO_LARGE",
    5: "MESSAGE_TOO_LARGE", 6: "MESSAGE_CRC_MISMATCH", 7: "TOPIC_NOT_FOUND", 8: "INVALID_TOPIC",
    9: "INVALID_QUEUE_ID", 10: "STORAGE_FAILED", 11: "DISK_FULL", 12: "SHUTTING_DOWN", 13: "NOT_MASTER",
    14: "INTERNAL", 15: "INVALID_ARGUMENT", 16: "TOO_MANY_CONNECTIONS", 17: "NOT_OWNER",
    18: "SEQUENCE_MISMATCH", 19: "SEQUENCE_TOO_OLD", 20: "OVERLOADED", 21: "AUTHENTICATION_FAILED",
    22: "NOT_AUTHENTICATED", 23: "PERMISSION_DENIED", 24: "TOO_MANY_LOGIN_FAILURES", 25: "TLS_REQUIRED",
    26: "TOPIC_IN_USE",
    27: "BUSY",
}
# The broker's max_frame_bytes by default: a larger request is refused before sending.
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
ERROR_CODES = {name: code for code, name in ERROR_NAMES.items()}
SEND_STATUSES = {0: "SEND_OK", 1: "FLUSH_DISK_TIMEOUT", 2: "FLUSH_SLAVE_TIMEOUT", 3: "SLAVE_NOT_AVAILABLE",
                 4: "OUTCOME_UNKNOWN"}
PULL_STATUSES = {0: "FOUND", 1: "NO_NEW_MESSAGES", 2: "OFFSET_OUT_OF_RANGE", 3: "OFFSET_EXPIRED"}
QUEUE_ID_ANY = 0xFFFFFFFF
RECORD_MAGIC = 0x324C524B
RECORD_FIXED_LEN = 80

_CRC_TABLE = []
for _index in range(256):
    _crc = _index
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), reflected, init and final XOR 0xFFFFFFFF; `crc` continues one."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class KeelError(Exception):
    """An ERROR frame: the request was not carried out. `code` is the number, `name` its
    name from the ERROR table ("AUTHENTICATION_FAILED", ...), `message` the broker's text."""

    def __init__(self, code, message):
        self.code = code
        self.name = ERROR_NAMES.get(code, f"UNKNOWN_ERROR_{code}")
        self.message = message
        super().__init__(f"keel error {code} {self.name}: {message}")


class TooLargeError(KeelError):
    """A request over the broker's frame limit (`max_frame_bytes`), refused by this client
    before a byte was sent: certainly not stored. Its name is MESSAGE_TOO_LARGE."""

    def __init__(self, size, limit):
        super().__init__(5, f"the request is {size} bytes, over the broker's frame limit of "
                            f"{limit} (max_frame_bytes); not sent")


class NotSentError(ConnectionError):
    """The connection failed while the request was being written: the broker holds at most
    a prefix of its frame, which it never decodes, so the request was not carried out."""


class LoginError(KeelError):
    """A LOGIN was refused (AUTHENTICATION_FAILED, TOO_MANY_LOGIN_FAILURES, TLS_REQUIRED, ...)."""


def _str16(text):
    data = text.encode("utf-8")
    return struct.pack("<H", len(data)) + data


class _Reader:
    def __init__(self, data):
        self.data = data
        self.position = 0

    def take(self, count):
        if self.position + count > len(self.data):
            raise ValueError("truncated body")
        chunk = self.data[self.position:self.position + count]
        self.position += count
        return chunk

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("<H", self.take(2))[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def str16(self):
        return self.take(self.u16()).decode("utf-8")

    def bytes32(self):
        return self.take(self.u32())


def decode_record(data):
    """Decodes and checks one stored record; returns (record dict, size)."""
    reader = _Reader(data)
    total_size, magic, stored_crc = struct.unpack("<III", reader.take(12))
    if magic != RECORD_MAGIC:
        raise ValueError(f"bad record magic {magic:#x}")
    if total_size < RECORD_FIXED_LEN or total_size > len(data):
        raise ValueError(f"bad record size {total_size}")
    computed = crc32c(data[12:total_size], crc32c(data[0:8]))
    if computed != stored_crc:
        raise ValueError(f"record CRC mismatch: stored {stored_crc:#010x}, computed {computed:#010x}")
    record = {
        "log_offset": reader.u64(), "queue_offset": reader.u64(), "queue_id": reader.u32(),
        "born_timestamp_ms": reader.u64(), "store_timestamp_ms": reader.u64(),
        "producer_id": reader.u64(), "sequence": reader.u64(), "flags": reader.u32(),
        "message_crc": reader.u32(), "flushed_before": reader.u64(),
    }
    record["topic"] = reader.str16()
    record["tags"] = reader.str16()
    record["keys"] = reader.str16()
    record["properties"] = [(reader.str16(), reader.str16()) for _ in range(reader.u16())]
    record["payload"] = reader.bytes32()
    if reader.position != total_size:
        raise ValueError("record fields do not fill its size")
    # The producer's CRC: topic, born, producer id, sequence, flags, then the tail exactly
    # as stored (tags, keys, properties, payload) -- the record's bytes from the tags on.
    head = _str16(record["topic"]) + struct.pack(
        "<QQQI", record["born_timestamp_ms"], record["producer_id"], record["sequence"], record["flags"])
    tail_start = RECORD_FIXED_LEN + 2 + len(record["topic"].encode("utf-8"))
    if crc32c(data[tail_start:total_size], crc32c(head)) != record["message_crc"]:
        raise ValueError("message CRC mismatch (end-to-end check failed)")
    record["message_id"] = f"{record['log_offset']:016X}"
    return record, total_size


class Client:
    """One connection. With `cafile` (or an `ssl_context`) it speaks TLS and verifies the
    broker's certificate against that CA for `server_hostname` (default: `host`, which may
    be an IP address matched against the certificate's IP SANs). `certfile`/`keyfile` give
    a client certificate for a broker with `tls_client_ca_file`."""

    def __init__(self, host="127.0.0.1", port=10911, timeout=10.0, cafile=None, server_hostname=None,
                 certfile=None, keyfile=None, ssl_context=None, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is None and cafile is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            if certfile is not None:
                ssl_context.load_cert_chain(certfile, keyfile)
        if ssl_context is not None:
            try:
                raw = ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
            except BaseException:
                raw.close()
                raise
        self.socket = raw
        self.tls = ssl_context is not None
        self.principal = None
        self.next_id = 1
        self.max_frame_bytes = max_frame_bytes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            if self.tls:
                self.socket.unwrap()  # close_notify; the broker may already have gone
        except (OSError, ValueError, ssl.SSLError):
            pass
        self.socket.close()

    def _read_exactly(self, count):
        data = b""
        while len(data) < count:
            chunk = self.socket.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def _frame(self, kind, body, flags=0):
        if 16 + len(body) > self.max_frame_bytes:
            raise TooLargeError(16 + len(body), self.max_frame_bytes)
        request_id = self.next_id
        self.next_id += 1
        header = struct.pack("<IBBHQ", 12 + len(body), VERSION, KINDS[kind], flags, request_id)
        return request_id, header + body

    def _send(self, request_id, frame):
        """Writes a frame. If the connection fails part-way, the broker may have said why
        first (FRAME_TOO_LARGE): that ERROR is raised; else NotSentError (not stored)."""
        try:
            self.socket.sendall(frame)
        except OSError as failure:
            # The connection is done for: a later frame must never follow the torn one.
            try:
                self.socket.settimeout(1.0)
                self._reply(request_id)
            except KeelError:
                self.socket.close()
                raise
            except (OSError, ValueError, struct.error):
                pass
            self.socket.close()
            raise NotSentError(f"the connection failed while the request was written ({failure}); "
                               "not sent in full, so not stored") from failure

    def _call(self, kind, body=b"", expect=None):
        request_id, frame = self._frame(kind, body)
        self._send(request_id, frame)
        return self._reply(request_id, expect)

    def _reply(self, request_id, expect=None):
        while True:
            (length,) = struct.unpack("<I", self._read_exactly(4))
            rest = self._read_exactly(length)
            _version, reply_kind, _flags, reply_id = struct.unpack("<BBHQ", rest[:12])
            body = rest[12:]
            if reply_kind == KINDS["ERROR"]:
                reader = _Reader(body)
                code = reader.u16()
                error = KeelError(code, reader.str16())
                if reply_id in (request_id, 0):
                    raise error
                continue
            if reply_id != request_id:
                continue  # a late reply to an earlier request: not ours to handle
            if expect is not None and reply_kind != KINDS[expect]:
                raise ValueError(f"unexpected reply kind {reply_kind:#x}")
            return _Reader(body)

    def ping(self):
        self._call("PING", expect="PONG")

    def _message(self, topic, payload, queue_id, tags, keys, properties):
        numbers = struct.pack("<QQQI", int(time.time() * 1000), 0, 0, 0)  # born, producer, seq, flags
        tail = _str16(tags) + _str16(keys) + struct.pack("<H", len(properties))
        for key, value in properties:
            tail += _str16(key) + _str16(value)
        tail += struct.pack("<I", len(payload)) + payload
        # message_crc covers every field but queue_id (and itself).
        message_crc = crc32c(tail, crc32c(_str16(topic) + numbers))
        return _str16(topic) + struct.pack("<I", queue_id) + numbers + struct.pack("<I", message_crc) + tail

    def send(self, topic, payload, queue_id=QUEUE_ID_ANY, tags="", keys="", properties=()):
        reader = self._call("SEND", self._message(topic, payload, queue_id, tags, keys, properties), "SEND_RESULT")
        status = reader.u16()
        result = {"status": SEND_STATUSES[status], "queue_id": reader.u32(), "queue_offset": reader.u64(),
                  "log_offset": reader.u64()}
        result["message_id"] = f"{result['log_offset']:016X}"
        return result

    def send_batch(self, topic, payloads, queue_id=QUEUE_ID_ANY, tags=""):
        """Stores all payloads or none; one reply for the batch."""
        body = struct.pack("<H", len(payloads))
        for payload in payloads:
            message = self._message(topic, payload, queue_id, tags, "", ())
            body += struct.pack("<I", len(message)) + message
        reader = self._call("SEND_BATCH", body, "SEND_BATCH_RESULT")
        status = SEND_STATUSES[reader.u16()]
        messages = [(reader.u32(), reader.u64(), reader.u64()) for _ in range(reader.u16())]
        return {"status": status, "messages": messages}

    def send_oneway(self, topic, payload, queue_id=QUEUE_ID_ANY, tags="", keys=""):
        request_id, frame = self._frame("SEND", self._message(topic, payload, queue_id, tags, keys, ()), FLAG_ONEWAY)
        self._send(request_id, frame)

    def pull(self, topic, queue_id, queue_offset, max_messages=64, max_bytes=1 << 20, wait_ms=0, group=""):
        body = _str16(group) + _str16(topic)
        body += struct.pack("<IQIII", queue_id, queue_offset, max_messages, max_bytes, wait_ms)
        reader = self._call("PULL", body, "PULL_RESULT")
        result = {"status": PULL_STATUSES[reader.u8()], "next_offset": reader.u64(),
                  "min_offset": reader.u64(), "max_offset": reader.u64()}
        count = reader.u32()
        data = reader.data[reader.position:]
        records, position = [], 0
        for _ in range(count):
            record, size = decode_record(data[position:])
            records.append(record)
            position += size
        if position != len(data):
            raise ValueError("trailing bytes after the records")
        result["records"] = records
        return result

    def commit_offset(self, group, topic, queue_id, offset):
        self._call("COMMIT_OFFSET", _str16(group) + _str16(topic) + struct.pack("<IQ", queue_id, offset),
                   "COMMIT_OFFSET_OK")

    def query_offset(self, group, topic, queue_id):
        reader = self._call("QUERY_OFFSET", _str16(group) + _str16(topic) + struct.pack("<I", queue_id), "OFFSET")
        found, offset = reader.u8(), reader.u64()
        return offset if found else None

    def create_topic(self, topic, queues):
        reader = self._call("CREATE_TOPIC", _str16(topic) + struct.pack("<I", queues), "TOPIC_CREATED")
        return {"topic": reader.str16(), "queues": reader.u32(), "created": reader.u8() == 1}

    def list_topics(self, topic=""):
        reader = self._call("LIST_TOPICS", _str16(topic), "TOPIC_LIST")
        topics = {}
        for _ in range(reader.u32()):
            name = reader.str16()
            topics[name] = [(reader.u64(), reader.u64()) for _ in range(reader.u32())]
        return topics

    def stats(self):
        reader = self._call("STATS", expect="STATS_RESULT")
        return {reader.str16(): reader.u64() for _ in range(reader.u16())}

    def login_password(self, user, password):
        """LOGIN with a user name and password; returns the principal. Raises LoginError."""
        return self._login(LOGIN_PASSWORD, user, password)

    def login_token(self, token):
        """LOGIN with a token ("keel_<16 hex>_<64 hex>", or the cluster token); returns the principal."""
        return self._login(LOGIN_TOKEN, "", token)

    def _login(self, mechanism, user, secret):
        try:
            reader = self._call("LOGIN", struct.pack("<B", mechanism) + _str16(user) + _str16(secret), "LOGIN_OK")
        except KeelError as error:
            raise LoginError(error.code, error.message) from None
        self.principal = reader.str16()
        return self.principal

    def security_admin(self, command):
        """SECURITY_ADMIN: `command` is a dict with "op" and its fields; returns the parsed JSON result."""
        data = json.dumps(command).encode("utf-8")
        reader = self._call("SECURITY_ADMIN", struct.pack("<I", len(data)) + data, "SECURITY_RESULT")
        return json.loads(reader.bytes32().decode("utf-8"))
