"""Checks a tenantmq export with the Python standard library only: python3 verify_export.py EXPORT [TENANT_ID
[VERSION:HASH]]. Exits 0 and prints the head when the chain is intact, is of TENANT_ID and still holds the head
recorded at an earlier check; exits 1 naming the first line that is not; exits 2 on arguments it cannot read."""
import hashlib, json, re, struct, sys

class Number(str):
    """A JSON number token, kept exactly as written."""

def canonical(value):
    if isinstance(value, Number):
        return str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical(item) for item in value) + "]"
    return "{" + ",".join(json.dumps(key, ensure_ascii=False) + ":" + canonical(value[key])
                          for key in sorted(value)) + "}"

def field(data):
    return struct.pack(">I", len(data)) + data

def event_hash(event, prev_hash):
    parts = [b"tenantmq.event.v1", event["stream_id"].encode(), str(event["version"]).encode(),
             str(event["position"]).encode(), event["event_type"].encode(),
             canonical(event["data"]).encode(), canonical(event["metadata"]).encode(),
             event["recorded_at"].encode(), prev_hash]
    return hashlib.sha256(b"".join(field(part) for part in parts)).digest()

def fail(why):  # not `assert`: `python3 -O` would skip every check
    sys.exit(f"NOT intact: {why}")

def usage(why):
    print(f"{why}\nusage: python3 verify_export.py EXPORT [TENANT_ID [VERSION:HASH]]", file=sys.stderr)
    sys.exit(2)

if not 2 <= len(sys.argv) <= 4:
    usage("give the export, then optionally the tenant id and the head recorded at an earlier check")
tenant, recorded_version, recorded_hash = None, None, None
if len(sys.argv) > 2:
    tenant = sys.argv[2]  # as the export spells it: lowercase, hyphenated
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", tenant):
        usage(f"{tenant!r} is not a tenant id as the export writes it (lowercase, hyphenated)")
if len(sys.argv) > 3:
    head = re.fullmatch(r"([1-9][0-9]{0,9}):([0-9a-f]{64})", sys.argv[3])
    if not head or int(head[1]) > 2**31 - 1:
        usage(f"{sys.argv[3]!r} is not VERSION:HASH (a version from 1 and 64 lowercase hex digits)")
    recorded_version, recorded_hash = int(head[1]), head[2]
prev, version, stream = bytes(32), 0, tenant
for number, line in enumerate(open(sys.argv[1], encoding="utf-8"), start=1):
    event = json.loads(line, parse_int=Number, parse_float=Number)
    stream = stream or event["stream_id"]
    if event["stream_id"] != stream:
        fail(f"line {number}: stream {event['stream_id']}, not {stream}")
    version += 1
    if int(event["version"]) != version:
        fail(f"line {number}: version gap")
    if bytes.fromhex(event["prev_hash"]) != prev:
        fail(f"line {number}: broken link")
    prev = event_hash(event, prev)
    if prev.hex() != event["hash"]:
        fail(f"line {number}: hash mismatch")
    if version == recorded_version and prev.hex() != recorded_hash:
        fail(f"line {number}: not the recorded head: the stream was rewritten since")
if version == 0:
    fail("no events")
if recorded_version is not None and recorded_version > version:
    fail(f"the stream ends at version {version}, before the recorded head: it was cut back since")
print(f"intact: {version} events, head {version}:{prev.hex()}")
