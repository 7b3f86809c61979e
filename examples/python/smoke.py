"""End-to-end check of the Python client against a running keeld:
python3 smoke.py HOST:PORT. Exits non-zero with a message on any failure. Its topics
and group carry a suffix of their own, so it can be run again on the same broker."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel  # noqa: E402


def main(address):
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        sys.exit(f"usage: python3 smoke.py HOST:PORT (not {address!r})")
    run = os.urandom(4).hex()
    try:
        client = keel.Client(host, int(port))
    except OSError as error:
        sys.exit(f"cannot reach keeld at {address}: {error} (is it running?)")
    with client:
        run_checks(client, run)
        too_large(client, host, int(port), run)
    print("python client: ok (71 messages sent, batched and consumed, CRCs checked; 10 MiB refused)")


def run_checks(client, run):
    orders, batched, group = f"py-orders-{run}", f"py-batch-{run}", f"py-group-{run}"
    if True:
        client.ping()
        created = client.create_topic(orders, 2)
        assert created["queues"] == 2, created
        sent = []
        for index in range(50):
            payload = f"python message {index}".encode()
            result = client.send(orders, payload, queue_id=index % 2, tags="py", keys=f"k{index}",
                                 properties=[("origin", "smoke.py")])
            assert result["status"] == "SEND_OK", result
            sent.append((result["queue_id"], result["queue_offset"], payload))
        client.send_oneway(orders, b"oneway", queue_id=0)
        batch = client.send_batch(batched, [f"batched {index}".encode() for index in range(20)], queue_id=0)
        assert batch["status"] == "SEND_OK" and [m[1] for m in batch["messages"]] == list(range(20)), batch
        records = client.pull(batched, 0, 0, max_messages=100)["records"]
        assert [r["payload"] for r in records] == [f"batched {index}".encode() for index in range(20)]
        client.ping()  # the oneway frame got no reply; the connection is still in step

        got = {}
        for queue_id in (0, 1):
            offset = client.query_offset(group, orders, queue_id) or 0
            while True:
                result = client.pull(orders, queue_id, offset, max_messages=16, wait_ms=200, group=group)
                if result["status"] == "NO_NEW_MESSAGES":
                    break
                assert result["status"] == "FOUND", result
                for record in result["records"]:
                    assert record["queue_offset"] == offset and record["topic"] == orders
                    got[(queue_id, record["queue_offset"])] = record
                    offset += 1
                client.commit_offset(group, orders, queue_id, offset)
            assert client.query_offset(group, orders, queue_id) == offset
        for queue_id, queue_offset, payload in sent:
            record = got[(queue_id, queue_offset)]
            assert record["payload"] == payload and record["tags"] == "py", record
            assert record["properties"] == [("origin", "smoke.py")], record
        assert got[(0, 25)]["payload"] == b"oneway"

        expired = client.pull(orders, 0, 1000, wait_ms=0)
        assert expired["status"] == "OFFSET_OUT_OF_RANGE", expired
        try:
            client.send("../bad", b"x")
            raise AssertionError("a bad topic name was accepted")
        except keel.KeelError as error:
            assert error.code == 8, error
        topics = client.list_topics(orders)
        assert topics[orders][0] == (0, 26), topics
        assert client.stats()["records_appended"] >= 71


def too_large(client, host, port, run):
    """A request over the frame limit is a certain refusal, never a connection reset:
    refused here before sending, or by the broker (FRAME_TOO_LARGE) when this client's
    own limit is set higher than the broker's."""
    big = os.urandom(10 * 1024 * 1024)
    try:
        client.send(f"py-big-{run}", big)
        raise AssertionError("a 10 MiB send was accepted")
    except keel.TooLargeError as error:
        assert error.name == "MESSAGE_TOO_LARGE", error
    client.ping()  # nothing was sent: the connection is still in step
    with keel.Client(host, port, max_frame_bytes=64 << 20) as unchecked:
        try:
            unchecked.send(f"py-big-{run}", big)
            raise AssertionError("a 10 MiB send was accepted")
        except keel.KeelError as error:
            assert error.name == "FRAME_TOO_LARGE", error
    try:
        client.list_topics(f"py-big-{run}")
        raise AssertionError("a refused send created its topic")
    except keel.KeelError as error:
        assert error.name == "TOPIC_NOT_FOUND", error


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 smoke.py HOST:PORT")
    main(sys.argv[1])
