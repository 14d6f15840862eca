#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets into fuzz/seeds/<target>/.

Seeds come from the real tracker traffic in tests/fixtures/tracker-19.0.1/ and hand-written
edge cases. Tokens are signed with the harness's secret ("fuzz-secret") and expire in 2100, so
seeded batch requests reach the log. Run from the repository root: python3 fuzz/make_seeds.py
"""
import base64, gzip, hashlib, hmac, json, os, pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests/fixtures/tracker-19.0.1"
OUT = ROOT / "fuzz/seeds"
SECRET = b"fuzz-secret"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b36(n):
    if n < 0:
        return "-" + b36(-n)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


def b58(data):
    n = int.from_bytes(data, "big")
    s = ""
    while n:
        n, r = divmod(n, 58)
        s = B58[r] + s
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + s


def token(sid, delay=0, exp=4102444800000, secret=SECRET):
    head = f"{b36(sid)}.{b36(delay)}.{b36(exp)}"
    return head + "." + b58(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def fixture(name):
    return (FIX / name).read_bytes()


def request(method, path, headers=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(method, path, headers, body, size=100):
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in headers]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x};e=1\r\n".encode() + part + b"\r\n"
    return out + b"0\r\nT: 1\r\n\r\n"


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    tok = token(7044371216235345)
    auth = ("Authorization", f"Bearer {tok}")
    start = fixture("start-request.json")
    start_json = json.loads(start)
    start_json["projectKey"] = "web-key"
    web_start = json.dumps(start_json).encode()
    mobile_start = json.dumps({
        "projectKey": "mobile-key", "trackerVersion": "1.0.15", "userUUID": "0CFEB1C0-FB25-4AA3-8FC0-4D0C1D28B1A1",
        "userOSVersion": "17.2", "userDevice": "iPhone14,2", "userDeviceType": "mobile", "timestamp": 1795771262696,
        "platform": "ios", "width": 390, "height": 844, "token": tok,
    }).encode()
    visual = fixture("pv2-batch1-visual-split855.bin")
    devtools = fixture("pv2-batch2-devtools.bin")
    gz = fixture("pv2-batch4-player.wire-gzip.bin")
    boundary = "----fuzzBoundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"projectKey\"\r\n\r\nmobile-key\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"a.jpeg\"; filename=\"a.jpeg\"\r\n\r\n").encode()
    form += b"\xff\xd8\xff\r\n--not-it\r\n" + f"\r\n--{boundary}--\r\n".encode()

    requests = {
        "web-start": request("POST", "/ingest/v1/web/start", [("User-Agent", UA), ("Content-Type", "application/json")], web_start),
        "mobile-start": request("POST", "/v1/mobile/start", [], mobile_start),
        "visual": request("POST", "/ingest/v1/web/i?batch=0_1_1129_kyes&split=855", [auth, ("DataType", "visual")], visual),
        "devtools": request("POST", "/ingest/v1/web/i?batch=0_2_277_kyes", [auth, ("DataType", "devtools")], devtools),
        "gzip": request("POST", "/v1/web/i", [auth, ("DataType", "player"), ("Content-Encoding", "gzip")], gz),
        "chunked": chunked("POST", "/v1/web/i", [auth, ("DataType", "analytics")], fixture("pv2-batch3-analytics.bin")),
        "late": request("POST", "/v1/ios/late", [("Authorization", f"Bearer {token(5, 0, 1)}")], b"\x6b\x80\x01\x02\x00payload"),
        "images": request("POST", "/v1/ios/images", [auth, ("Content-Type", f"multipart/form-data; boundary={boundary}")], form),
        "preflight": request("OPTIONS", "/ingest/v1/web/i?batch=0_1_1_kyes", [("Origin", "http://a"), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization,datatype")]),
        "tags": request("GET", "/ingest/v1/web/tags", [auth]),
        "conditions": request("GET", "/v1/web/conditions/11", [auth]),
        "not-started": request("POST", "/v1/web/not-started", [("User-Agent", UA)], b'{"projectKey":"web-key","trackerVersion":"3.0.0","DoNotTrack":true}'),
        "expect": request("POST", "/v1/web/i", [auth, ("Expect", "100-continue")], devtools),
        "http10": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        "smuggle": request("POST", "/v1/web/i", [auth, ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
    }
    pipelined = b"".join(requests[k] for k in ["preflight", "devtools", "tags", "gzip", "chunked"])
    for seed_byte, (name, data) in enumerate(list(requests.items()) + [("pipelined", pipelined)]):
        write("http_conn", name, bytes([seed_byte * 37 % 256]) + data)
    write("start_json", "web", b"\x00" + web_start)
    write("start_json", "web-gzip", b"\x02" + gzip.compress(web_start))
    write("start_json", "mobile", b"\x01" + mobile_start)
    write("start_json", "reset", b"\x00" + json.dumps({**start_json, "token": tok, "reset": True}).encode())
    for name, data in requests.items():
        write("http_head", name, data)
    write("token", "vector1", b"1xd0rglvdjl.0.1gcmxpmo0.AvB75S1BQFBRPQcgtFqdWos8j518oQvg7s72cG9oCSYZ")
    write("token", "vector2", b"3w5e11264sgsf.-15o.loyw3v28.ACxAE7eShPyUwo8e3kcwVcJcZ8SWzQqaQsqvug1y4Uu2")
    write("token", "vector3", b"1.0.1.8aLxiGfZ3JZgRCvbVtR6ZFPwkXzrj5pVKa1Q1jvXc6xh")
    write("token", "harness", tok.encode())
    for name in ["pv2-batch1-visual-split855.bin", "pv2-batch2-devtools.bin", "pv2-batch3-analytics.bin",
                 "pv2-batch4-player.gunzipped.bin", "pv1-batch1-player.gunzipped.bin"]:
        write("batch_walk", name, fixture(name))
    write("batch_walk", "mobile", b"\x6b\x80\x01\x02\x00payload")
    write("batch_walk", "legacy", b"\x50\x00\x00\x00\x05\x03abc")
    write("multipart", "images", boundary.encode() + b"\n" + form)
    write("multipart", "quoted", b'"quoted boundary"\n--quoted boundary\r\nContent-Disposition: form-data; name="x"\r\n\r\nv\r\n--quoted boundary--\r\n')
    for name in ["pv2-batch4-player.wire-gzip.bin", "pv1-batch1-player.wire-gzip.bin"]:
        write("gzip_inflate", name, b"\x00\x10" + fixture(name))
    write("gzip_inflate", "bomb", b"\x00\x01" + gzip.compress(b"\0" * 100000))
    write("gzip_inflate", "two-members", b"\x40\x00" + gzip.compress(b"abc") + gzip.compress(b"def"))


if __name__ == "__main__":
    main()
