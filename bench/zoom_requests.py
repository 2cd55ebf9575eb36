"""Writes N unique, signed Zoom participant_joined deliveries for wrk (one per line:
signature, timestamp, body, tab-separated). Usage: zoom_requests.py SECRET N OUT"""
import hashlib, hmac, json, sys, time

secret, count, out = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
ts = str(int(time.time()))
with open(out, "w") as f:
    for n in range(count):
        body = json.dumps({
            "event": "webinar.participant_joined", "event_ts": 1767261600000 + n,
            "payload": {"account_id": "AAAAAABBBB", "object": {
                "id": str(81000000000 + n % 50), "uuid": "4444AAAiAAAAAiAiAiiAii==", "host_id": "x1yCzABCDEfg23HiJKl4mN",
                "topic": "Bench webinar", "type": 5, "start_time": "2026-01-01T10:00:00Z", "duration": 60,
                "timezone": "UTC", "participant": {
                    "user_id": str(n), "user_name": f"Person {n}", "id": f"p{n}",
                    "join_time": "2026-01-01T10:00:00Z", "email": f"person{n}@example.com"}}}},
            separators=(",", ":"))
        sig = "v0=" + hmac.new(secret, f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        f.write(f"{sig}\t{ts}\t{body}\n")
