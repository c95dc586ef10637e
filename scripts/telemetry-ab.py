# Rough A/B of OpenTelemetry traces: the proxy's CPU time per request with `[telemetry]` on (a local OTLP/HTTP sink) vs
# off, release binaries, store off, a sequential keep-alive client. Usage: scripts/telemetry-ab.py target/release [N]
import http.client, json, os, socket, subprocess, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REL = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
got = {"bytes": 0, "posts": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); self.rfile.read(n)
        got["bytes"] += n; got["posts"] += 1
        self.send_response(200); self.send_header("content-type", "application/x-protobuf"); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
otlp = ThreadingHTTPServer(("127.0.0.1", 0), H); threading.Thread(target=otlp.serve_forever, daemon=True).start()
mport = free()
mock = subprocess.Popen([f"{REL}/mock-upstream", "--listen", f"127.0.0.1:{mport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.5)
def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
def run(label, extra):
    d = tempfile.mkdtemp(); port = free()
    cfg = f"""builtin_catalog = false
[store]
enabled = false
[providers.mock]
base_url = "http://127.0.0.1:{mport}/v1"
api_key = "k"
[models."mock/model"]
provider = "mock"
model = "mock-model"
max_context_size = 100000
{extra}"""
    open(f"{d}/c.toml", "w").write(cfg)
    p = subprocess.Popen([f"{REL}/kimi-proxy", "serve", "--config", f"{d}/c.toml", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{d}/data"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "w"), env={"PATH": os.environ["PATH"], "HOME": d})
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError: time.sleep(0.1)
    c = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"model": "mock/model", "stream": False, "messages": [{"role": "user", "content": "Say hello."}]})
    def one():
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"}); r = c.getresponse(); r.read(); assert r.status == 200
    for _ in range(300): one()
    time.sleep(1.5)
    t0 = ticks(p.pid); w0 = time.time()
    for _ in range(N): one()
    time.sleep(2.0)  # let the last batch go
    t1 = ticks(p.pid); w1 = time.time()
    hz = os.sysconf("SC_CLK_TCK")
    p.terminate(); p.wait()
    print(f"{label}: {N} requests, proxy CPU {(t1-t0)/hz*1e6/N:.1f} us/request, wall {(w1-w0-2.0)*1e6/N:.0f} us/request")
for rnd in range(int(os.environ.get("ROUNDS", "2"))):
    run("off", "")
    run("on ", f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{otlp.server_address[1]}"')
print("collector got", got["posts"], "posts,", got["bytes"], "bytes")
mock.terminate()
