"""Load test of the web demo: N concurrent clients POSTing photos to ``cifar-dvc-serve`` on loopback.

Starts the real server (``python -m cifar_dvc.serve.app``, waitress) on 127.0.0.1 with the
``cnn`` variant (seed 000's CNN, 72,906 parameters: ``--model`` a trained ``models/cnn.keras``, or
by default the same architecture built untrained into a temporary directory, which costs exactly
as much per prediction), waits for ``/api/health``, warms up, then runs ``--clients`` client
threads for ``--duration`` seconds (or until ``--max-requests``, whichever comes first). Each
client keeps one HTTP/1.1 connection open and uploads photos in turn (multipart ``image``), waiting
``--think-ms`` between its answer and its next request (0 = closed loop: as fast as the server
answers, which measures saturation rather than what users see).

Reports errors, client-side latency percentiles (p50, p90, p99, max), throughput, the server's own
``elapsed_ms``, and the server's resident memory (VmRSS) before and after the load, plus the
machine load (``/proc/loadavg``) before and after, since the machine may be shared. Writes a
markdown section to ``--out`` (appends, so several configurations land in one file).

Photos: ``--photos DIR`` (every image file under it, e.g. the 100 real photos of
``../shared/data/custom-photos-dev.tar.gz`` unpacked; by hand only, never committed) or, by
default, 20 generated JPEG photos 300 to 640 pixels wide.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py --clients 20 --duration 60 \\
        --photos /tmp/custom-photos-dev --out benchmarks/results/serve_load.md
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def build_cnn_model(directory: Path) -> Path:
    """Seed 000's CNN from the project's registry, untrained, with a sidecar; returns the .keras path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cifar_dvc import models
    from cifar_dvc.modelinfo import ModelInfo, save_info
    from cifar_dvc.normalization import NormStats

    model = models.build("cnn", (32, 32, 3), 10)
    if model.count_params() != 72_906:
        raise SystemExit(f"expected seed 000's CNN with 72,906 parameters, got {model.count_params():,}")
    path = directory / "cnn.keras"
    model.save(path)
    stats = NormStats("standardize", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    save_info(path, ModelInfo("cnn", "cifar10", CLASSES, (32, 32, 3), stats))
    return path


def load_photos(directory: Path | None, count: int = 20) -> list[tuple[str, bytes]]:
    """(name, bytes) of the photos to upload: the files under ``directory`` or generated JPEGs."""
    if directory is not None:
        suffixes = (".jpg", ".jpeg", ".png", ".webp")
        files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in suffixes)
        if not files:
            raise SystemExit(f"{directory}: no .jpg/.jpeg/.png/.webp files")
        return [(p.name, p.read_bytes()) for p in files]
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        width = int(rng.integers(300, 641))
        height = int(width * rng.uniform(0.66, 1.0))
        # Smooth colour gradients plus noise: compresses like a photo, not like a flat field.
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 255
        noisy = base + rng.normal(0, 12, base.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
        photos.append((f"generated_{i}.jpg", buffer.getvalue()))
    return photos


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Client(threading.Thread):
    """One user: a keep-alive connection, photos uploaded in turn, ``think`` seconds between them."""

    def __init__(self, index: int, port: int, bodies: list[tuple[bytes, str]], stop: threading.Event,
                 think: float, budget: threading.Semaphore) -> None:
        super().__init__(daemon=True)
        self.port, self.bodies, self.stop, self.think, self.budget = port, bodies, stop, think, budget
        self.offset = index  # clients start at different photos
        self.latencies: list[float] = []
        self.server_ms: list[float] = []
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = self.offset
        while not self.stop.is_set() and self.budget.acquire(blocking=False):
            body, ctype = self.bodies[i % len(self.bodies)]
            i += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    key = f"HTTP {response.status}"
                    self.errors[key] = self.errors.get(key, 0) + 1
                else:
                    answer = json.loads(payload)
                    if len(answer["predictions"]) != 5:
                        self.errors["not 5 predictions"] = self.errors.get("not 5 predictions", 0) + 1
                    self.latencies.append(elapsed)
                    self.server_ms.append(float(answer["elapsed_ms"]))
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                key = type(exc).__name__
                self.errors[key] = self.errors.get(key, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            if self.think:
                self.stop.wait(self.think)
        conn.close()


def start_server(model: Path, threads: int, tf_threads: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "cifar_dvc.serve.app", "--model", str(model), "--host", "127.0.0.1",
           "--port", "0", "--threads", str(threads), "--tf-threads", str(tf_threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=ROOT)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:  # "serving <model> on http://127.0.0.1:<port>/"
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the server did not start; run it by hand to see why")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a trained models/cnn.keras (default: build one)")
    parser.add_argument("--photos", type=Path, help="folder of photos to upload (default: generated)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause of each client between requests")
    parser.add_argument("--threads", type=int, default=4, help="server request threads")
    parser.add_argument("--tf-threads", type=int, default=1, help="server --tf-threads")
    parser.add_argument("--out", type=Path, help="append a markdown section to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_cnn_model(Path(tmp))
        photos = load_photos(args.photos)
        bodies = [multipart(name, data) for name, data in photos]
        proc, port = start_server(model, args.threads, args.tf_threads)
        try:
            report = run_load(args, proc, port, bodies, photos)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    report["model"] = str(args.model) if args.model else "seed 000 cnn (72,906 parameters), untrained"
    print(json.dumps(report, indent=2))
    if args.out:
        write_markdown(args, report, args.out)


def run_load(args: argparse.Namespace, proc: subprocess.Popen, port: int,
             bodies: list[tuple[bytes, str]], photos: list[tuple[str, bytes]]) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/health")
    health = json.loads(conn.getresponse().read())
    conn.close()
    warm = Client(0, port, bodies, threading.Event(), 0.0, threading.Semaphore(2 * len(bodies)))
    warm.run()  # every photo twice, single client: imports, allocator and caches warm
    if warm.errors:
        raise SystemExit(f"warm-up failed: {warm.errors}")
    rss_before = rss_mb(proc.pid)
    load_before = loadavg()
    cpu_before = cpu_seconds(proc.pid)

    stop = threading.Event()
    budget = threading.Semaphore(args.max_requests)
    clients = [Client(i, port, bodies, stop, args.think_ms / 1000, budget) for i in range(args.clients)]
    start = time.perf_counter()
    for client in clients:
        client.start()
    stop.wait(args.duration)
    stop.set()
    for client in clients:
        client.join(timeout=60)
    wall = time.perf_counter() - start

    latencies = [x * 1000 for c in clients for x in c.latencies]
    server_ms = [x for c in clients for x in c.server_ms]
    errors: dict[str, int] = {}
    for client in clients:
        for key, n in client.errors.items():
            errors[key] = errors.get(key, 0) + n
    rss_after = rss_mb(proc.pid)
    cpu_used = cpu_seconds(proc.pid) - cpu_before
    sizes = [Image.open(io.BytesIO(data)).size for _, data in photos]
    return {
        "health": health, "clients": args.clients, "think_ms": args.think_ms, "duration_s": round(wall, 1),
        "server_threads": args.threads, "tf_threads": args.tf_threads,
        "photos": len(photos), "photo_width_median": statistics.median(w for w, _ in sizes),
        "photo_width_max": max(w for w, _ in sizes),
        "photo_kb_median": round(statistics.median(len(d) for _, d in photos) / 1024, 1),
        "requests_ok": len(latencies), "errors": errors, "throughput_rps": round(len(latencies) / wall, 1),
        "latency_ms": {q: round(percentile(latencies, float(q[1:])), 1) for q in ("p50", "p90", "p99")}
        | {"max": round(max(latencies, default=float("nan")), 1)},
        "server_elapsed_ms": {"p50": round(percentile(server_ms, 50), 1),
                              "p99": round(percentile(server_ms, 99), 1)},
        # CPU the server spent per answered request: what an idle machine's capacity depends on
        # (2 cores / this = the most requests per second it could answer), whatever the load.
        "server_cpu_ms_per_request": round(1000 * cpu_used / max(1, len(latencies)), 2),
        "rss_mb_before": round(rss_before[0], 1), "rss_mb_after": round(rss_after[0], 1),
        "rss_mb_peak": round(rss_after[1], 1), "loadavg_before": load_before, "loadavg_after": loadavg(),
    }


def write_markdown(args: argparse.Namespace, r: dict, out: Path) -> None:
    goal = r["latency_ms"]["p50"] <= 30 and r["latency_ms"]["p99"] <= 150 and not r["errors"]
    command = "python benchmarks/serve_load.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--out") and a != str(out))
    lines = [
        f"## {r['clients']} clients, think time {r['think_ms']:g} ms, {r['duration_s']:g} s "
        f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}; load average before / after: {r['loadavg_before']} / "
        f"{r['loadavg_after']} (shared machine)",
        f"- Server: waitress, {r['server_threads']} threads, TensorFlow intra- and inter-op threads "
        f"{r['tf_threads']}; model: {r['model']}",
        f"- Photos: {r['photos']}, median width {r['photo_width_median']:g} px (max "
        f"{r['photo_width_max']}), median {r['photo_kb_median']:g} KB, uploaded in turn",
        "",
        "| requests ok | errors | throughput | p50 | p90 | p99 | max | server p50 / p99 "
        "| server CPU per request | RSS before → after (peak) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['requests_ok']} | {sum(r['errors'].values())} {r['errors'] or ''} | "
        f"{r['throughput_rps']:g} req/s | {r['latency_ms']['p50']:g} ms | {r['latency_ms']['p90']:g} ms | "
        f"{r['latency_ms']['p99']:g} ms | {r['latency_ms']['max']:g} ms | "
        f"{r['server_elapsed_ms']['p50']:g} / {r['server_elapsed_ms']['p99']:g} ms | "
        f"{r['server_cpu_ms_per_request']:g} ms | "
        f"{r['rss_mb_before']:g} → {r['rss_mb_after']:g} MB ({r['rss_mb_peak']:g}) |",
        "",
        f"Goal (p50 <= 30 ms, p99 <= 150 ms, no errors): {'met' if goal else 'NOT met'}.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
