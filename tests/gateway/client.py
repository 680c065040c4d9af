#!/usr/bin/env python3
"""Real clients against a running `protolake gateway` (driven by tests/gateway.rs).

Stubs are generated from tests/protos/gateway.proto with grpcio-tools; error details are read
with grpcio-status; reflection and health with grpcio-reflection and grpcio-health-checking;
`buf curl` (PyPI buf-bin) speaks gRPC and Connect through reflection; urllib posts HTTP/JSON.

  client.py all ADDR         every scenario; prints {"accepted": [...]} as the last line
  client.py unary ADDR --expect ok|unavailable|deadline|queue-full
  client.py health ADDR --expect SERVING|NOT_SERVING [--within SECONDS]
  client.py certificate FOLDER   writes a self-signed cert.pem and key.pem for 127.0.0.1
  client.py tls ADDR --marker FOLDER   a call over TLS trusting FOLDER/cert.pem
  client.py direct ADDR        unary and stream calls to a route writing its table directly
  client.py slow-stream ADDR --events N --marker FILE   (FILE appears a quarter of the way in)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SERVICE = "protolake.tests.gateway.v1.ClickService"


def stubs():
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="gateway-stubs-")
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc",
        "-I" + os.path.join(ROOT, "tests", "protos"),
        "-I" + os.path.join(ROOT, "proto"),
        "-I" + wkt,
        "--python_out=" + out,
        "--grpc_python_out=" + out,
        "gateway.proto",
        "buf/validate/validate.proto",
    ])
    assert rc == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, out)
    import gateway_pb2
    import gateway_pb2_grpc

    return gateway_pb2, gateway_pb2_grpc


pb, pb_grpc = stubs()


def click(country="DE", slot=3, page="https://example.com/a", with_time=True, click_id=None):
    m = pb.Click(click_id=click_id or str(uuid.uuid4()), country=country, slot=slot, page=page)
    if with_time:
        m.event_time.GetCurrentTime()
    return m


def details(error):
    """(BadRequest field violations as (field, reason), ErrorInfo, buf.validate violations count)."""
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status on {error.code()}: {error.details()}"
    fields, info, validate = [], None, None
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            fields = [(v.field, v.reason) for v in bad.field_violations]
            assert all(v.description for v in bad.field_violations), bad
        elif any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.type_url.endswith("/buf.validate.Violations"):
            from buf.validate import validate_pb2

            v = validate_pb2.Violations()
            v.ParseFromString(any_.value)
            validate = [(x.rule_id, x.message) for x in v.violations]
    return fields, info, validate


def expect_refused(call, code, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def http(addr, path, body, content_type="application/json", headers=None):
    request = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST")
    request.add_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def scenario_all(addr, accepted):
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.ClickServiceStub(channel)
    raw_track = channel.unary_unary(f"/{SERVICE}/Track")

    # Reflection lists the service, and health says SERVING for it.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = [s.name for a in answers for s in a.list_services_response.service]
    assert SERVICE in services, services
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.time() + 30
    while health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status != health_pb2.HealthCheckResponse.SERVING:
        assert time.time() < deadline, "health never SERVING"
        time.sleep(0.2)

    # A valid call: answered with where it was written, in the reply and in the metadata.
    m = click()
    reply, call = stub.Track.with_call(m, metadata=[("idempotency-key", "retry-me-1")], timeout=30)
    md = dict(call.initial_metadata())
    assert md["protolake-offset"] == str(reply.offset) and md["protolake-partition"] == str(reply.partition), md
    accepted.append({"id": m.click_id, "idempotency": "retry-me-1"})

    # gzip-compressed request.
    m = click()
    stub.Track(m, compression=grpc.Compression.Gzip, timeout=30)
    accepted.append({"id": m.click_id})

    # Two rule violations: both listed, in every detail.
    e = expect_refused(stub.Track, grpc.StatusCode.INVALID_ARGUMENT, click(country="usa", slot=99), timeout=30)
    fields, info, validate = details(e)
    assert {f for f, _ in fields} == {"country", "slot"} and len(fields) >= 2, fields
    assert ("country", "string.len") in fields and all(r for _, r in fields), fields
    assert info is not None and info.domain == "protolake" and info.metadata["contract_version"] == "1", info
    assert validate is not None and len(validate) == len(fields), validate
    assert "country" in e.details() and "slot" in e.details(), e.details()

    # The sink's own checks: invalid UTF-8, no event time, a cut record, an empty message.
    base = click().SerializeToString()
    e = expect_refused(raw_track, grpc.StatusCode.INVALID_ARGUMENT, base + b"\x2a\x02\xff\xfe", timeout=30)
    assert ("page", "invalid_utf8") in details(e)[0], details(e)[0]
    e = expect_refused(raw_track, grpc.StatusCode.INVALID_ARGUMENT, click(with_time=False).SerializeToString(), timeout=30)
    assert ("event_time", "missing_event_time") in details(e)[0], details(e)[0]
    e = expect_refused(raw_track, grpc.StatusCode.INVALID_ARGUMENT, base[:-3], timeout=30)
    assert any(r == "truncated" for _, r in details(e)[0]), details(e)[0]
    e = expect_refused(raw_track, grpc.StatusCode.INVALID_ARGUMENT, b"", timeout=30)
    assert ("event_time", "missing_event_time") in details(e)[0], details(e)[0]

    # Over gateway.max_message_bytes (4 MiB): RESOURCE_EXHAUSTED, as gRPC servers answer it.
    e = expect_refused(raw_track, grpc.StatusCode.RESOURCE_EXHAUSTED, base + b"\x2a\x80\x80\x80\x03" + b"x" * (6 << 20),
                       timeout=60)
    assert "max_message_bytes" in e.details(), e.details()

    # A method the config does not route.
    expect_refused(stub.NotRouted, grpc.StatusCode.UNIMPLEMENTED, click(), timeout=30)

    # A client stream of 10,000 events, 100 of them bad: one answer naming each refused one.
    events, bad = [], set()
    for i in range(10_000):
        if i % 100 == 7:
            bad.add(i)
            events.append(click(country="usa"))
        else:
            events.append(click())
    stream_md = [("authorization", "Bearer stream-secret"), ("idempotency-key", "batch-7")]
    reply = stub.TrackStream(iter(events), metadata=stream_md, timeout=120)
    assert reply.accepted == 10_000 - len(bad), reply.accepted
    assert {r.index for r in reply.refused} == bad, sorted(r.index for r in reply.refused)[:5]
    for r in reply.refused:
        assert {v.field for v in r.violations} == {"country"} and all(v.rule and v.description for v in r.violations), r
    accepted.extend({"id": e.click_id, "idempotency": "batch-7", "index": i} for i, e in enumerate(events) if i not in bad)

    # Bearer tokens per route.
    expect_refused(stub.TrackStream, grpc.StatusCode.UNAUTHENTICATED, iter([click()]), timeout=30)
    expect_refused(stub.TrackSecure, grpc.StatusCode.UNAUTHENTICATED, click(), timeout=30)
    expect_refused(stub.TrackSecure, grpc.StatusCode.UNAUTHENTICATED, click(),
                   metadata=[("authorization", "Bearer nope")], timeout=30)
    expect_refused(stub.TrackSecure, grpc.StatusCode.PERMISSION_DENIED, click(),
                   metadata=[("authorization", "Bearer stream-secret")], timeout=30)
    m = click()
    stub.TrackSecure(m, metadata=[("authorization", "Bearer secure-secret")], timeout=30)
    accepted.append({"id": m.click_id})

    # HTTP/JSON (the Connect protocol's unary form).
    path = f"/{SERVICE}/Track"
    cid = str(uuid.uuid4())
    ok = {"clickId": cid, "eventTime": "2026-12-03T10:00:00Z", "country": "FR", "slot": 2}
    status, body = http(addr, path, json.dumps(ok).encode())
    assert status == 200 and "offset" in body, (status, body)
    accepted.append({"id": cid})
    status, body = http(addr, path, b"{not json")
    assert status == 400 and body["code"] == "invalid_argument" and "JSON" in body["message"], (status, body)
    status, body = http(addr, path, json.dumps({**ok, "clickId": str(uuid.uuid4()), "country": "x"}).encode())
    assert status == 400 and body["code"] == "invalid_argument", (status, body)
    debug = [d for d in body["details"] if d["type"] == "google.rpc.BadRequest"][0]["debug"]
    assert {v["field"] for v in debug["fieldViolations"]} == {"country"}, debug
    status, body = http(addr, path, b"<xml/>", content_type="text/xml")
    assert status in (415, 501) and body["code"] in ("unimplemented", "invalid_argument"), (status, body)

    # buf curl: reflection, gRPC and Connect.
    buf = shutil.which("buf", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert buf, "buf (PyPI buf-bin) is not installed"
    listed = subprocess.run([buf, "curl", "--http2-prior-knowledge", "--protocol", "grpc", "--list-methods",
                             f"http://{addr}"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and f"{SERVICE}/Track" in listed.stdout, listed
    # gRPC through reflection; Connect (whose reflection would be a Connect stream) from the
    # descriptor set.
    image = os.path.join(tempfile.mkdtemp(), "gateway.binpb")
    from grpc_tools import protoc
    import grpc_tools
    assert protoc.main(["protoc", "-I" + os.path.join(ROOT, "tests", "protos"), "-I" + os.path.join(ROOT, "proto"),
                        "-I" + os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"), "--include_imports",
                        "--descriptor_set_out=" + image, "gateway.proto"]) == 0
    for protocol, schema in (("grpc", []), ("connect", ["--schema", image])):
        cid = str(uuid.uuid4())
        data = json.dumps({"clickId": cid, "eventTime": "2026-12-03T11:00:00Z", "country": "NL", "slot": 1})
        out = subprocess.run([buf, "curl", "--http2-prior-knowledge", "--protocol", protocol, *schema, "--data", data,
                              f"http://{addr}/{SERVICE}/Track"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "offset" in out.stdout, (protocol, out)
        accepted.append({"id": cid})
        bad_data = json.dumps({"clickId": "not-a-uuid", "eventTime": "2026-12-03T11:00:00Z", "country": "NL"})
        out = subprocess.run([buf, "curl", "--http2-prior-knowledge", "--protocol", protocol, *schema, "--data",
                              bad_data, f"http://{addr}/{SERVICE}/Track"], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "click_id" in (out.stdout + out.stderr), (protocol, out)


def scenario_unary(addr, expect):
    channel = grpc.insecure_channel(addr)
    stub = pb_grpc.ClickServiceStub(channel)
    m = click()
    if expect == "ok":
        # As a client should: RESOURCE_EXHAUSTED and UNAVAILABLE (both with RetryInfo) are
        # retried, with the same idempotency key.
        deadline = time.time() + 90
        tries = 0
        while True:
            tries += 1
            try:
                stub.Track(m, timeout=60, wait_for_ready=True, metadata=[("idempotency-key", m.click_id)])
                break
            except grpc.RpcError as e:
                retryable = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
                if e.code() not in retryable or time.time() > deadline:
                    raise
                print(f"try {tries}: {e.code()}", file=sys.stderr)
                time.sleep(0.5)
        print(json.dumps({"accepted": [{"id": m.click_id}]}))
        return
    if expect == "queue-full":
        # One record may wait (max_in_flight = 1): while it does, the next call is refused at once.
        import threading

        waiting = threading.Thread(target=lambda: expect_refused(stub.Track, grpc.StatusCode.UNAVAILABLE, click(),
                                                                  timeout=60))
        waiting.start()
        time.sleep(0.5)
        e = expect_refused(stub.Track, grpc.StatusCode.RESOURCE_EXHAUSTED, m, timeout=60)
        from grpc_status import rpc_status
        from google.rpc import error_details_pb2

        retry = [d for d in rpc_status.from_call(e).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry, "no RetryInfo on RESOURCE_EXHAUSTED"
        waiting.join()
        print(json.dumps({"refused": m.click_id}))
        return
    if expect == "deadline":
        # The client's deadline is shorter than the produce timeout: its own code, not CANCELLED.
        expect_refused(stub.Track, grpc.StatusCode.DEADLINE_EXCEEDED, m, timeout=1)
        print(json.dumps({"refused": m.click_id}))
        return
    e = expect_refused(stub.Track, grpc.StatusCode.UNAVAILABLE, m, timeout=60)
    assert "acknowledge" in e.details(), e.details()
    print(json.dumps({"refused": m.click_id}))


def scenario_slow_stream(addr, events, marker):
    """A stream that is still sending when the gateway is told to stop: it must be answered in
    full, every acknowledged event published."""
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.ClickServiceStub(channel)
    sent = []

    def generate():
        for i in range(events):
            m = click()
            sent.append(m.click_id)
            yield m
            if i == events // 4:
                open(marker, "w").close()
            time.sleep(0.002)

    reply = stub.TrackStream(generate(), metadata=[("authorization", "Bearer stream-secret")], timeout=120)
    assert reply.accepted == events and not reply.refused, (reply.accepted, len(reply.refused))
    print(json.dumps({"accepted": [{"id": i} for i in sent]}))


def scenario_stream(addr, expect, events):
    """A stream through a produce queue of one record (max_in_flight = 1): each event waits for
    the one before it, and all are accepted; with the broker gone, the stream fails UNAVAILABLE
    naming its first unacknowledged event."""
    stub = pb_grpc.ClickServiceStub(grpc.insecure_channel(addr))
    sent = [click() for _ in range(events)]
    md = [("authorization", "Bearer stream-secret")]
    if expect == "ok":
        reply = stub.TrackStream(iter(sent), metadata=md, timeout=120)
        assert reply.accepted == events and not reply.refused, (reply.accepted, len(reply.refused))
        print(json.dumps({"accepted": [{"id": m.click_id} for m in sent]}))
        return
    e = expect_refused(stub.TrackStream, grpc.StatusCode.UNAVAILABLE, iter(sent), metadata=md, timeout=60)
    assert e.details().startswith("event 0 of the stream:") and "acknowledge" in e.details(), e.details()
    print(json.dumps({"refused": [m.click_id for m in sent]}))


def scenario_direct(addr):
    """Direct mode: calls answered after the commit that holds their record."""
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.ClickServiceStub(channel)
    accepted = []
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        m = click()
        reply, call = stub.Track.with_call(m, timeout=60)
        # No topic, so no partition or offset: the table version says where it is.
        assert reply.ByteSize() == 0, reply
        version = int(dict(call.initial_metadata())["protolake-table-version"])
        return m.click_id, version

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    assert all(v >= 1 for _, v in results), results
    # Calls arriving together share commits.
    assert len({v for _, v in results}) < len(results), results
    accepted.extend({"id": i} for i, _ in results)
    expect_refused(stub.Track, grpc.StatusCode.INVALID_ARGUMENT, click(country="usa"), timeout=30)
    events = [click() for _ in range(500)] + [click(slot=99)]
    reply = stub.TrackStream(iter(events), metadata=[("authorization", "Bearer stream-secret")], timeout=120)
    assert reply.accepted == 500 and [r.index for r in reply.refused] == [500], reply
    accepted.extend({"id": e.click_id} for e in events[:500])
    print(json.dumps({"accepted": accepted}))


def make_certificate(folder):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in `folder`."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "protolake-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    with open(os.path.join(folder, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(folder, "key.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def scenario_tls(addr, folder):
    with open(os.path.join(folder, "cert.pem"), "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(addr, credentials)
    grpc.channel_ready_future(channel).result(timeout=60)
    m = click()
    reply = pb_grpc.ClickServiceStub(channel).Track(m, timeout=60)
    assert reply.offset >= 0
    # Cleartext to a TLS port gets no answer.
    plain = pb_grpc.ClickServiceStub(grpc.insecure_channel(addr))
    try:
        plain.Track(click(), timeout=5)
        raise AssertionError("a cleartext call to the TLS port was answered")
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e.code()
    print(json.dumps({"accepted": [{"id": m.click_id}]}))


def scenario_health(addr, expect, within):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))
    want = health_pb2.HealthCheckResponse.ServingStatus.Value(expect)
    deadline = time.time() + within
    while True:
        status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10).status
        if status == want:
            return
        assert time.time() < deadline, f"health is {status}, not {expect}, after {within}s"
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "scenario", choices=["all", "unary", "stream", "health", "slow-stream", "direct", "tls", "certificate"]
    )
    p.add_argument("addr")
    p.add_argument("--expect", default="ok")
    p.add_argument("--within", type=float, default=30)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--marker")
    a = p.parse_args()
    if a.scenario == "all":
        accepted = []
        scenario_all(a.addr, accepted)
        print(json.dumps({"accepted": accepted}))
    elif a.scenario == "certificate":
        make_certificate(a.addr)
    elif a.scenario == "tls":
        scenario_tls(a.addr, a.marker)
    elif a.scenario == "direct":
        scenario_direct(a.addr)
    elif a.scenario == "slow-stream":
        scenario_slow_stream(a.addr, a.events, a.marker)
    elif a.scenario == "unary":
        scenario_unary(a.addr, a.expect)
    elif a.scenario == "stream":
        scenario_stream(a.addr, a.expect, a.events)
    else:
        scenario_health(a.addr, a.expect, a.within)


if __name__ == "__main__":
    main()
