#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (fuzz/corpus/<target>/) from the
project's own test payloads (the shapes of tests/api/*.rs and demo/) and
Zoom's example bodies in ../shared/specs/zoom. Run once when a target is
added; scripts/fuzz.sh then grows and minimizes the corpora. HubSpot's
documents are not used: nothing from them may be checked in."""
import base64, hashlib, hmac, json, os, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
corpus = os.path.join(root, "fuzz", "corpus")


def put(target, data):
    data = data if isinstance(data, bytes) else data.encode()
    folder = os.path.join(corpus, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, hashlib.sha1(data).hexdigest()), "wb") as out:
        out.write(data)


# Zoom: the demo's deliveries and, for the events the gateway maps, Zoom's examples.
for item in json.load(open(os.path.join(root, "demo", "zoom-webhooks.json"))):
    put("zoom_webhook", json.dumps(item["body"]))
put("zoom_webhook", json.dumps({"event": "endpoint.url_validation",
                                "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}, "event_ts": 1}))
spec = os.path.join(root, "..", "shared", "specs", "zoom", "webhooks.meetings.json")
if os.path.exists(spec):
    mapped = ("registration_", "participant_joined", "participant_left", ".ended")
    for event, op in json.load(open(spec))["webhooks"].items():
        if any(part in event for part in mapped):
            examples = op["post"]["requestBody"]["content"]["application/json"].get("examples", {})
            for example in list(examples.values())[:1]:
                put("zoom_webhook", example["value"])
else:
    sys.exit(f"Zoom's document is missing at {spec}")

# Eventbrite deliveries and what its API answers (tests/api/eventbrite.rs).
for action, url in [("order.placed", "https://www.eventbriteapi.com/v3/orders/900/"),
                    ("attendee.updated", "https://www.eventbriteapi.com/v3/events/5551212/attendees/1/"),
                    ("barcode.checked_in", "https://www.eventbriteapi.com/v3/events/5551212/attendees/2/"),
                    ("test", "https://www.eventbriteapi.com/v3/webhooks/1/")]:
    put("eventbrite_webhook", json.dumps({
        "config": {"action": action, "user_id": "eb-org-42",
                   "endpoint_url": "https://relay.example.com/webhooks/eventbrite/x",
                   "webhook_id": "1990496"}, "api_url": url}))


def attendee(id, email, status):
    return {"id": id, "event_id": "5551212", "order_id": "900",
            "created": "2026-02-01T09:00:00Z", "changed": "2026-02-03T18:30:00Z",
            "profile": {"email": email, "first_name": "Ann", "last_name": "Lee", "name": "Ann Lee"},
            "checked_in": status == "Checked In", "cancelled": status == "Not Attending",
            "refunded": False, "status": status}


put("eventbrite_fetched", json.dumps(attendee("1", "Ann@Example.com", "Attending")))
put("eventbrite_fetched", json.dumps({
    "id": "900", "event_id": "5551212", "email": "buyer@example.com", "status": "placed",
    "attendees": [attendee("1", "Ann@Example.com", "Attending"),
                  attendee("2", "bo@example.com", "Checked In"),
                  attendee("3", "cy@example.com", "Not Attending")]}))

# URLs, the accepted and the refused of the unit test in src/sources/eventbrite.rs.
for url in ["https://www.eventbriteapi.com/v3/orders/1/",
            "https://WWW.EventbriteAPI.com:443/v3/orders/1/",
            "https://www.eventbriteapi.com@evil.example.com/v3/orders/1/",
            "https://user:pw@www.eventbriteapi.com/v3/orders/1/",
            "https://www.eventbriteapi.com/v3/%2e%2e/admin/",
            "https://[::1]/v3/orders/1/",
            "http://127.0.0.1:8080/eb/v3/orders/1/?expand=attendees",
            "file:///etc/passwd"]:
    put("fetch_url", url)

# Generic records (tests/api/generic.rs).
def record(id, email):
    return {"id": id, "externalEventId": "webinar-42", "externalAccountId": "acc-7",
            "state": "attend", "email": email, "occurredAt": "2026-01-01T10:00:00Z",
            "firstName": "Jane", "lastName": "Doe", "properties": {"joinedAt": "2026-01-01T10:00:00Z"}}


put("generic_records", json.dumps(record("r-1", "a@example.com")))
put("generic_records", json.dumps({"records": [record("r-1", "a@example.com"),
                                               {"id": 7, "externalEventId": 42, "state": "register",
                                                "vid": "123", "occurredAt": 1767261600000}]}))

# Bearer tokens: well formed, but for another key, expired, or unsigned.
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header, claims, key):
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


for header, claims in [({"alg": "HS256", "typ": "JWT"}, {"exp": 4102444800, "sub": "crm"}),
                       ({"alg": "HS256"}, {"exp": 1, "aud": ["a", "b"], "nbf": "x"}),
                       ({"alg": "none"}, {"exp": 4102444800}),
                       ({"alg": "RS256", "kid": "../../k"}, {"exp": 4102444800})]:
    put("jwt_header", "Bearer " + token(header, claims, b"another key"))

# Standard Webhooks headers, one a line, then the body.
body = json.dumps(record("r-1", "a@example.com"))
signature = base64.b64encode(hmac.new(b"another key", f"msg_1.1767261600.{body}".encode(),
                                      hashlib.sha256).digest()).decode()
put("standard_webhooks_headers", f"msg_1\n1767261600\nv1,{signature} v1a,xyz\n{body}")
put("standard_webhooks_headers", f"msg_1\nnot-a-time\nv1,\n{body}")
