"""Where a request's server CPU goes, stage by stage: this project's server beside the naive one.

    .venv/bin/python bench/breakdown.py --model-dir DIR [--cell decode_b1_c64 --cell encode_b1_c64]
        [--variant "" --variant "@../before"]     # "@DIR": `vae serve` from another checkout

For each server in turn (the peers' `serve_naive.py`, then `vae serve` with each --variant's flags) and
each cell, the peers' load generator drives the cell (as in bench/side_by_side.py) while this script

- reads every server thread's CPU time from /proc/PID/task over the measured window: CPU per request,
  per thread (event loop, inference threads, grpc's completion-queue poller, latent statistics);
- samples the server with py-spy (`record --nonblocking --threads`, raw stacks; `pip install py-spy`)
  and sorts each sample into a stage by the innermost frame it recognises (STAGES below).

A stage's figure is its thread's CPU per request times the stage's share of that thread's samples, in
µs per request. Samples whose innermost frame is a wait (epoll, a condition, the executor's queue) are
left out of the shares: py-spy cannot always tell a thread blocked in C from one running. grpc's own
Cython (receiving a call, running the request deserializer when it is C, serialising and sending the
reply) has no Python frames: it is the "grpc.aio call handling" stage, for both servers alike; the
naive server's protobuf parse (a C deserializer) is inside it, this project's is its own stage
(service/decode_guard.py wraps it in Python). One run, one machine: compare within a run only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import PEERS_DIR, ROOT, _free_port, _stop  # type: ignore[import-not-found]  # noqa: E402

__all__ = ["main", "classify", "STAGES"]

# (stage, needles): the first frame from the leaf up that contains a needle decides the stage.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("inference (onnxruntime)", ("onnxruntime_inference_collection.py", "Graph.run ")),
    ("latent statistics", ("latent_stats.py", "latent_collector.py", "ServiceMetrics._run",
                           "ServiceMetrics._fold")),
    ("metrics", ("service/metrics.py", "prometheus_client", "score_metrics.py", "group_metrics.py")),
    ("protobuf parse", ("decode_guard.py", "FromString")),
    ("codec (tensor <-> numpy)", ("service/codec.py", "contracts/tensors.py", "kserve_tensors.py")),
    ("validation", ("service/validation.py", "service/rpc_checks.py")),
    ("batcher hand-off (queue, threads, wake-ups)", (
        "service/batching.py", "concurrent/futures", "call_soon_threadsafe", "_write_to_self",
        "_read_from_self", "threading.py")),
    ("admission, routing, request wrapper", ("service/calls.py", "service/admission.py",
                                             "service/registry", "service/served.py")),
    ("handler body (reply building, sampling)", ("service/servicer.py", "service/latent_rpcs.py",
                                                 "service/sampling.py", "NaiveVae.")),
]
GRPC = "grpc.aio call handling (Cython: receive, reply serialise, send)"
LOOP = "event loop (asyncio)"
POLLER = "grpc completion-queue poller thread"
# Innermost frames that are waits, not work (see the module docstring).
WAITS = ("EpollSelector.select", "Condition.wait", "Event.wait", "_worker (concurrent/futures/thread.py:8",
         "SimpleQueue.get", "Thread.run (threading.py")


def classify(frames: list[str]) -> str | None:
    """The stage of one sample (frames root first), or None for a wait."""
    leaf = frames[-1]
    if "_poll_wrapper" in frames[0] or "_poll_wrapper" in leaf:
        return POLLER
    if any(w in leaf for w in WAITS):
        return None
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    if leaf.startswith("Handle._run"):
        return GRPC  # the innermost Python frame runs a grpc Cython callback or coroutine
    if "asyncio" in leaf or "selectors.py" in leaf:
        return LOOP
    return "other"


def _threads_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of `pid` and of its child processes' threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _profile(pid: int, seconds: float, rate: int, out: Path) -> dict[str, collections.Counter[str]]:
    """thread label -> stage -> samples, from one py-spy record of `seconds`."""
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run([str(spy), "record", "--nonblocking", "--threads", "--format", "raw", "-r", str(rate),
                    "-d", str(int(seconds)), "-p", str(pid), "-o", str(out)],
                   check=True, capture_output=True, timeout=seconds + 60)
    per: dict[str, collections.Counter[str]] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        stage = classify(frames)
        if stage is not None:
            per.setdefault(frames[0], collections.Counter())[stage] += int(count)
    return per


def run_cell(label: str, cmd: list[str], target: str, port: int, cell: str, args: argparse.Namespace,
             env: dict[str, str], out: Path, server_env: dict[str, str] | None = None) -> dict[str, object]:
    peers = args.peers_dir.resolve()
    log = open(out / f"{label}-{cell}.server.log", "ab")
    proc = subprocess.Popen(cmd, cwd=peers, env=server_env or env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    result = out / f"{label}-{cell}.json"
    try:
        lg = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "peers_loadgen.py"), str(peers / "loadgen.py"), "run",
             "--target", target, "--addr", f"127.0.0.1:{port}", "--model-dir", str(args.model_dir),
             "--label", label, "--out", str(result), "--cells", cell, "--warmup", str(args.warmup),
             "--duration", str(args.duration), "--connections", str(args.connections),
             "--server-pgid", str(proc.pid), "--ready-timeout", "120"],
            env=env, cwd=peers, stdout=open(out / f"{label}-{cell}.loadgen.log", "ab"),
            stderr=subprocess.STDOUT)
        while not result.exists() and lg.poll() is None:  # the loadgen says nothing until its cell is done:
            time.sleep(0.2)                              # wait for the server's own "listening" log line
            if b"listening on" in (out / f"{label}-{cell}.server.log").read_bytes():
                break
        time.sleep(args.warmup + 1.5)  # readiness probe + warm-up; then inside the measured window
        spy_s = max(1, args.duration - 3)
        cpu0 = _threads_cpu(proc.pid)
        samples = _profile(proc.pid, spy_s, args.rate, out / f"{label}-{cell}.raw")
        cpu1 = _threads_cpu(proc.pid)
        lg.wait(timeout=args.warmup + args.duration + 180)
    finally:
        _stop(proc)
        log.close()
    cells = json.loads(result.read_text())["cells"]
    req_s = float(cells[0]["req_per_s"])
    stages: collections.Counter[str] = collections.Counter()
    thread_ms: dict[str, float] = {}
    for thread, counts in samples.items():
        tid = int(thread.split("(")[1].split(")")[0])
        cpu_s = cpu1.get(tid, 0.0) - cpu0.get(tid, 0.0)
        per_req_us = cpu_s / spy_s / req_s * 1e6 if req_s else 0.0
        name = thread.split(": ", 1)[-1]
        thread_ms[name] = thread_ms.get(name, 0.0) + per_req_us
        total = sum(counts.values())
        for stage, n in counts.items():
            stages[stage] += per_req_us * n / total
    all_cpu = sum(cpu1.values()) - sum(v for k, v in cpu0.items() if k in cpu1)
    return {"label": label, "cell": cell, "req_per_s": req_s, "p50_ms": cells[0]["p50_ms"],
            "cpu_us_per_request": all_cpu / spy_s / req_s * 1e6 if req_s else None,
            "stages_us": dict(stages), "threads_us": thread_ms}


def table(rows: list[dict[str, object]]) -> str:
    names = [s for s, _ in STAGES] + [GRPC, LOOP, POLLER, "other"]
    head = ["stage, µs of server CPU per request"] + [f"{r['label']} {r['cell']}" for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        vals = [r["stages_us"].get(name, 0.0) for r in rows]  # type: ignore[attr-defined]
        if any(v >= 0.5 for v in vals):
            lines.append("| " + " | ".join([name, *(f"{v:,.0f}" for v in vals)]) + " |")
    lines.append("| **sampled stages, total** | " + " | ".join(
        f"{sum(r['stages_us'].values()):,.0f}" for r in rows) + " |")  # type: ignore[attr-defined]
    lines.append("| whole process (/proc), µs/request | " + " | ".join(
        f"{r['cpu_us_per_request']:,.0f}" for r in rows) + " |")
    lines.append("| requests/s; p50 ms | " + " | ".join(
        f"{r['req_per_s']:,.0f}; {r['p50_ms']:.2f}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    p.add_argument("--model-dir", type=Path, required=True, help="a `vae export` folder (1x28x28)")
    p.add_argument("--cell", action="append", dest="cells", help="default: decode_b1_c64, encode_b1_c64")
    p.add_argument("--variant", action="append", dest="variants", metavar="FLAGS",
                   help='`vae serve` flags of one column (repeatable; default: ""); "@DIR FLAGS" runs '
                        "`vae serve` from the checkout DIR (e.g. a worktree of an earlier commit)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "breakdown")
    args = p.parse_args(argv)
    args.model_dir, args.out = args.model_dir.resolve(), args.out.resolve()
    if not (Path(sys.executable).with_name("py-spy")).exists():
        print("bench: py-spy is not installed in this virtualenv (pip install py-spy)", file=sys.stderr)
        return 2
    if not (args.peers_dir / "loadgen.py").exists():
        print(f"bench: the peers harness is absent ({args.peers_dir})", file=sys.stderr)
        return 2
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    env = {**os.environ, "PEERS_PROJECT": str(ROOT), "PEERS_LATENT": str(manifest["latent_dim"]),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for cell in args.cells or ["decode_b1_c64", "encode_b1_c64"]:
        port = _free_port()
        rows.append(run_cell("naive", [sys.executable, str(args.peers_dir.resolve() / "serve_naive.py"),
                                       str(args.model_dir), str(port)], "naive", port, cell, args, env,
                             args.out))
        for flags in args.variants if args.variants is not None else [""]:
            port = _free_port()
            words = flags.split()
            server_env = None
            if words and words[0].startswith("@"):  # "@CHECKOUT FLAGS": vae serve from another checkout
                checkout = Path(words.pop(0)[1:]).resolve()
                server_env = {**env, "PYTHONPATH": str(checkout)}
            label = ("vae " + flags).strip() if flags else "vae (defaults)"
            cmd = [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(args.model_dir),
                   "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *words]
            safe = "".join(ch if ch.isalnum() or ch in "-=" else "_" for ch in label)
            rows.append(run_cell(safe, cmd, "vae", port, cell, args, env, args.out, server_env)
                        | {"label": label})
    text = table(rows)
    print(f"{args.warmup} s warm-up + {args.duration} s per cell, py-spy over {max(1, args.duration - 3)} s "
          f"of it at {args.rate} Hz; {args.connections} connections; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}\n\n{text}")
    tmp = args.out / "breakdown.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, args.out / "breakdown.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
