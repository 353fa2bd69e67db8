"""This project's server beside the plain grpc.aio server (`naive`), in the peers' own harness.

One command prints the table of the serving issue with this project's column(s) filled:

    .venv/bin/python bench/serve.py --against-naive [--duration 8 --warmup 2 --repeat 3]
        [--connections 8] [--variant "" --variant "--processes 2"] [--model-dir DIR]
        [--variant "@../before"]       # "@DIR FLAGS": `vae serve` from another checkout

It uses ../shared/peers beside the checkout (or --peers-dir): `loadgen.py limit` for the in-process
onnxruntime limit, then for each server in turn (never two at once) `loadgen.py run` with the same
cells, connections and model: `serve_naive.py` and `vae serve` plus each --variant's flags. Servers run
in their own session so that the load generator's server-CPU column sees every process of a group;
each is stopped by its process group (SIGTERM, then SIGKILL after 30 s). With --repeat N every number
is the median of N runs of the pair (servers alternate within a run). The model is the grey28 preset
exported by `vae export` (trained briefly; speed does not depend on the weights) unless --model-dir.
The peers' scripts run in this project's virtualenv (numpy, onnxruntime, grpcio, grpcio-tools), not
in the venvs of their setup.sh. Figures on a shared machine are noisy: compare within one run only.

Connections: `loadgen.py` gives each of a cell's `--connections` clients its own channel, but grpc
merges identical channels of one process into one TCP connection, and SO_REUSEPORT spreads
connections: run as it is, a cell would reach one process of a group. The load generator is therefore
run through bench/peers_loadgen.py (each channel its own connection; every server alike);
`--shared-connections` runs it unwrapped. Below the table: each group's requests per process, from
its one /metrics scrape, to show the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT.parent / "shared" / "peers"

__all__ = ["main", "table"]

CELLS = ["decode_b1_c1", "decode_b1_c16", "decode_b1_c64", "encode_b1_c64", "decode_b256_c4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a child the leader left behind
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue


def _loadgen(peers: Path, *args: str, env: dict[str, str], log: Path, timeout: float,
             own_connections: bool = True) -> None:
    # Through bench/peers_loadgen.py unless asked otherwise: one TCP connection per channel.
    wrap = [str(ROOT / "bench" / "peers_loadgen.py")] if own_connections else []
    with open(log, "ab") as f:
        rc = subprocess.run([sys.executable, *wrap, str(peers / "loadgen.py"), *args], env=env, cwd=peers,
                            stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0:
        raise SystemExit(f"bench: loadgen {args[0]} failed (rc {rc}); see {log}")


def run_server(label: str, cmd: list[str], peers: Path, target: str, port: int, model_dir: Path,
               args: argparse.Namespace, env: dict[str, str], out: Path,
               metrics_port: int = 0, server_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start one server, load it with every cell, stop it; the loadgen's JSON."""
    logs = out / "logs"
    server_log = open(logs / f"{label}.server.log", "ab")
    proc = subprocess.Popen(cmd, cwd=peers, env=server_env or env, stdout=server_log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    result = out / f"{label}.json"
    shares: dict[str, float] = {}
    try:
        budget = 120 + len(args.cells) * (args.warmup + args.duration + 20)
        _loadgen(peers, "run", "--target", target, "--addr", f"127.0.0.1:{port}", "--model-dir",
                 str(model_dir), "--label", label, "--out", str(result), "--cells", ",".join(args.cells),
                 "--warmup", str(args.warmup), "--duration", str(args.duration),
                 "--connections", str(args.connections), "--server-pgid", str(proc.pid),
                 "--ready-timeout", "120", env=env, log=logs / f"{label}.loadgen.log", timeout=budget,
                 own_connections=not args.shared_connections)
        shares = _requests_per_process(metrics_port) if metrics_port else {}
    finally:
        _stop(proc)
        server_log.close()
    doc: dict[str, Any] = json.loads(result.read_text())
    doc["requests_per_process"] = shares
    return doc


def _requests_per_process(metrics_port: int) -> dict[str, float]:
    """Finished requests per server process from the group's one scrape (empty for one process)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "vae_requests":
            for s in fam.samples:
                if s.name == "vae_requests_total" and "process" in s.labels:
                    out[s.labels["process"]] = out.get(s.labels["process"], 0.0) + s.value
    return out


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def merge(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Cell -> the median over runs of each figure."""
    cells: dict[str, dict[str, list[float | None]]] = {}
    for doc in runs:
        for c in doc["cells"]:
            per = cells.setdefault(c["cell"], {})
            cpu = c.get("server_cpu_cores")
            ms_per_req = cpu / c["req_per_s"] * 1e3 if cpu is not None and c["req_per_s"] else None
            figures = (("img_per_s", c["img_per_s"]), ("p50_ms", c["p50_ms"]), ("p99_ms", c["p99_ms"]),
                       ("errors", float(c["errors"])), ("cpu_ms_per_request", ms_per_req))
            for key, value in figures:
                per.setdefault(key, []).append(value)
    return {cell: {k: _median(v) for k, v in figs.items()} for cell, figs in cells.items()}


def _fmt(v: float | None, nd: int = 0) -> str:
    return "—" if v is None else f"{v:,.{nd}f}"


def _ratio(vae: float | None, naive: float | None, lower_is_better: bool = False) -> str:
    if not vae or not naive:
        return "—"
    if lower_is_better:
        r = vae / naive
        return f"{r:.2f}× slower" if r > 1 else f"{1 / r:.2f}× faster"
    return f"{vae / naive:.2f}"


def table(limit: dict[tuple[str, int], dict[str, float]],
          columns: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The issue's table: limit, naive, then each vae column and its ratio to naive."""
    vae_labels = [k for k in columns if k != "naive"]
    head = ["cell", "in-process limit", "plain grpc.aio server, no batching (`naive`)"]
    for label in vae_labels:
        head += [f"`{label}`", "÷ naive"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    naive = columns.get("naive", {})

    def row(name: str, cell: str, key: str, lim: str, extra: str | None = None, lower: bool = False,
            nd: int = 0) -> None:
        def show(col: dict[str, dict[str, Any]]) -> str:
            c = col.get(cell, {})
            text = _fmt(c.get(key), nd)
            if extra and c.get(extra) is not None:
                text += f" ({_fmt(c.get(extra), 1)})"
            if c.get("errors"):
                text += f" [{_fmt(c['errors'])} errors]"
            return text
        cols = [name, lim, show(naive)]
        for label in vae_labels:
            col = columns[label]
            cols += [show(col), _ratio(col.get(cell, {}).get(key), naive.get(cell, {}).get(key), lower)]
        lines.append("| " + " | ".join(cols) + " |")

    def lim(op: str, batch: int, key: str = "img_per_s", nd: int = 0) -> str:
        r = limit.get((op, batch))
        return f"{_fmt(r[key], nd)} (b{batch})" if r else "—"

    row("decode b1 c1, p50 ms", "decode_b1_c1", "p50_ms", lim("decode", 1, "p50_ms", 2), lower=True, nd=2)
    row("decode b1 c16, img/s", "decode_b1_c16", "img_per_s", lim("decode", 1))
    row("decode b1 c64, img/s (p99 ms)", "decode_b1_c64", "img_per_s", "", extra="p99_ms")
    row("encode b1 c64, img/s", "encode_b1_c64", "img_per_s", lim("encode", 1))
    row("decode b256 c4, img/s", "decode_b256_c4", "img_per_s", lim("decode", 256))
    row("server CPU per request, ms (decode b1 c64)", "decode_b1_c64", "cpu_ms_per_request", "", nd=3)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    p.add_argument("--model-dir", type=Path, help="a `vae export` folder (default: the grey28 preset)")
    p.add_argument("--cache", type=Path, default=ROOT / ".bench" / "models")
    p.add_argument("--warmup", type=int, default=2, help="whole seconds per cell, not recorded")
    p.add_argument("--duration", type=int, default=8, help="whole seconds per cell, recorded")
    p.add_argument("--repeat", type=int, default=1, help="runs of the pair; figures are medians")
    p.add_argument("--connections", type=int, default=8,
                   help="gRPC channels per cell, the same for every server "
                        "(SO_REUSEPORT spreads connections)")
    p.add_argument("--variant", action="append", dest="variants", metavar="FLAGS",
                   help='`vae serve` flags of one column (repeatable; default: "" and "--processes 2"); '
                        '"@DIR FLAGS" runs `vae serve` from the checkout DIR (an earlier commit\'s worktree)')
    p.add_argument("--cells", type=lambda s: s.split(","), default=CELLS)
    p.add_argument("--shared-connections", action="store_true",
                   help="run loadgen.py as it is: grpc then merges a cell's channels into one connection")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "side-by-side")
    args = p.parse_args(argv)
    # The peers' scripts run in their own folder: every path handed to them is made absolute here.
    args.out = args.out.resolve()
    peers = args.peers_dir.resolve()
    if not (peers / "loadgen.py").exists() or not (peers / "serve_naive.py").exists():
        print(f"bench: the peers harness is absent ({peers} has no loadgen.py / serve_naive.py); the "
              "side-by-side run needs it: put ../shared/peers beside the checkout or pass --peers-dir",
              file=sys.stderr)
        return 2
    variants = args.variants if args.variants is not None else ["", "--processes 2"]
    if args.model_dir is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from serve import grey28  # type: ignore[import-not-found]

        model_dir = grey28(args.cache)
    else:
        model_dir = args.model_dir
    model_dir = model_dir.resolve()  # a relative --cache too
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if list(manifest["input_shape"]) != [1, 28, 28]:
        print(f"bench: the peers' load generator sends 1x28x28 images; {model_dir} takes "
              f"{manifest['input_shape']}", file=sys.stderr)
        return 2
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PEERS_PROJECT": str(ROOT), "PEERS_LATENT": str(manifest["latent_dim"]),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    _loadgen(peers, "limit", "--model-dir", str(model_dir), "--out", str(out / "limit.json"),
             "--duration", str(max(1, args.duration // 2)), env=env, log=out / "logs" / "limit.log",
             timeout=300)
    limit_doc = json.loads((out / "limit.json").read_text())
    limit = {(r["op"], r["batch"]): r for r in limit_doc["rows"]}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.repeat):
        port = _free_port()
        runs.setdefault("naive", []).append(run_server(
            f"naive-run{r}", [sys.executable, str(peers / "serve_naive.py"), str(model_dir), str(port)],
            peers, "naive", port, model_dir, args, env, out))
        for flags in variants:
            port, metrics_port = _free_port(), _free_port()
            words = flags.split()
            server_env = None
            if words and words[0].startswith("@"):  # "@CHECKOUT FLAGS": vae serve from another checkout
                server_env = {**env, "PYTHONPATH": str(Path(words.pop(0)[1:]).resolve())}
            label = ("vae serve " + flags).strip() if flags else "vae serve (defaults)"
            cmd = [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(model_dir), "--host",
                   "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *words]
            safe = "".join(ch if ch.isalnum() or ch == "=" else "_" for ch in label)
            runs.setdefault(label, []).append(run_server(f"{safe}-run{r}", cmd, peers, "vae", port,
                                                         model_dir, args, env, out, metrics_port,
                                                         server_env))
    columns = {label: merge(docs) for label, docs in runs.items()}
    text = table(limit, columns)
    for label, docs in runs.items():
        for i, d in enumerate(docs):
            shares = d.get("requests_per_process") or {}
            total = sum(shares.values())
            if len(shares) > 1 and total:
                text += (f"\n\n`{label}` run {i}: requests per process over all cells: " + ", ".join(
                    f"{p}: {v / total:.0%}" for p, v in sorted(shares.items())))
    header = (f"{args.repeat} run(s) of the pair, medians; {args.warmup} s warm-up + {args.duration} s "
              "per cell; "
              f"{args.connections} connection(s) per cell for every server; model {model_dir} "
              f"(latent {manifest['latent_dim']}); {os.cpu_count()} CPUs, load average at the end "
              f"{os.getloadavg()[0]:.2f}")
    print(header + "\n\n" + text)
    doc = {"header": header, "limit": limit_doc, "columns": columns, "runs": runs, "variants": variants}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(header + "\n\n" + text + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
