#!/usr/bin/env python3
"""Loopback load on one lesiond: many clients submitting small experiments at once.

Starts `lesiond` on a free loopback port with a fresh database (the bundled stories260K on the CPU),
then runs --clients clients at once, each on its own gRPC connection and user name
(x-lesion-user), each in a closed loop: SubmitExperiment (timed), WatchExperiment to the final state,
next. Every experiment is a one-head ablation of a few windows, distinct heads, one shared baseline.
A full queue (RESOURCE_EXHAUSTED) is counted and retried after a short pause; it is a refusal, not
a loss. Stops after --experiments acknowledged submissions, or --duration seconds.

Reports Submit latency (p50 / p99 / max), end-to-end latency, experiments/s, refusals, and whether
anything was lost: every acknowledged id must reach a final state in its watch and be stored in the
database in that state (ListExperiments after the load). lesiond's memory (VmRSS, VmHWM from
/proc/PID/status) is read idle after start and after the load; its peak is VmHWM (or a higher VmRSS
sampled every 0.2 s during the load); the database
size (with its WAL) at the end. --max-rss-mib / --max-db-mib make those bounds checks (exit 1 when
exceeded); --lesiond-arg passes flags to the server, e.g. its cache or quota limits.

  .venv/bin/python bench/server_load.py --clients 50 --experiments 2000
  .venv/bin/python bench/server_load.py --clients 50 --duration 60 --max-rss-mib 512 --json

Exit status: 0 when nothing was lost and every bound held, 1 otherwise, 2 for bad flags.
Needs the `lesion` Python package (client/python) for the generated stubs."""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from lesion._proto import experiment_pb2, service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
FINAL = {service_pb2.DONE, service_pb2.FAILED, service_pb2.CANCELLED, service_pb2.INTERRUPTED}
MIB = 1 << 20


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--experiments", type=int, default=None, help="stop after this many acknowledged submissions (default 1000)"
    )
    stop.add_argument("--duration", type=float, default=None, help="stop submitting after this many seconds")
    p.add_argument("--lesiond", default=os.environ.get("LESIOND", str(ROOT / "build" / "server" / "lesiond")))
    p.add_argument("--model", default=str(ROOT / "models" / "stories260K"), help="model directory served")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--windows", type=int, default=2, help="windows of tinystories-sample per experiment")
    p.add_argument(
        "--lesiond-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for lesiond, e.g. --lesiond-arg=--max-queue-per-device=128 (repeatable)",
    )
    p.add_argument("--max-rss-mib", type=float, help="bound on lesiond's peak RSS (VmHWM) to check")
    p.add_argument("--max-db-mib", type=float, help="bound on the database size (with its WAL) to check")
    p.add_argument("--db-dir", help="where the database goes (default a temporary directory, removed)")
    p.add_argument("--seed", type=int, default=0, help="picks the ablated heads")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    if args.experiments is None and args.duration is None:
        args.experiments = 1000
    if (
        args.clients < 1
        or (args.experiments is not None and args.experiments < 1)
        or (args.duration is not None and args.duration <= 0)
    ):
        p.error("--clients, --experiments and --duration must be positive")
    if not Path(args.lesiond).is_file():
        p.error(f"lesiond not found at {args.lesiond} (build it, or pass --lesiond / set LESIOND)")
    return args


def proc_memory(pid):
    """{"VmRSS": bytes, "VmHWM": bytes} of a live process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024  # the file says kB
    return out


def db_bytes(db):
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Server:
    def __init__(self, args, db):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        self.log = open(db.parent / "lesiond.log", "w")
        self.command = [
            args.lesiond,
            "--listen",
            self.address,
            "--db",
            str(db),
            "--model",
            f"stories={args.model}",
            *args.lesiond_arg,
        ]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # "lesiond listening on ..." or EOF when it exits
        if "listening on" not in line:
            self.stop()
            sys.exit(f"lesiond did not start ({' '.join(self.command)}):\n{(db.parent / 'lesiond.log').read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Load:
    def __init__(self, args, address):
        self.args, self.address = args, address
        self.rng = random.Random(args.seed)
        self.submit_s = []  # latency of each acknowledged SubmitExperiment
        self.end_to_end_s = []  # submit to final event
        self.acked = {}  # id -> final status its watch saw (None until then)
        self.refused = 0  # RESOURCE_EXHAUSTED answers (retried)
        self.errors = []  # anything else
        self.started = 0  # submissions begun, for --experiments
        self.deadline = None

    def spec(self, index):
        return json_format.ParseDict(
            {
                "model": "stories",
                "name": f"load-{index}",
                "tags": ["server-load"],
                "dataset": {"named": "tinystories-sample"},
                "eval": {"seq_len": self.args.seq_len, "max_windows": self.args.windows},
                "interventions": [
                    {"head_ablation": {"layer": self.rng.randrange(5), "heads": [self.rng.randrange(8)]}}
                ],
                "measurements": [{"perplexity": {}}],
            },
            experiment_pb2.ExperimentSpec(),
        )

    def more(self):
        if self.deadline is not None:
            return time.monotonic() < self.deadline
        return self.started < self.args.experiments

    async def client(self, number):
        metadata = (("x-lesion-user", f"load-client-{number}"),)
        async with grpc.aio.insecure_channel(self.address) as channel:
            lesion = service_pb2_grpc.LesionStub(channel)
            await channel.channel_ready()  # connection set-up is not part of a Submit's latency
            while self.more():
                self.started += 1
                request = service_pb2.SubmitExperimentRequest(spec=self.spec(self.started))
                while True:
                    begin = time.perf_counter()
                    try:
                        queued = await lesion.SubmitExperiment(request, metadata=metadata, timeout=60)
                        break
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            self.errors.append(f"SubmitExperiment: {e.code().name}: {e.details()}")
                            return
                        self.refused += 1
                        await asyncio.sleep(0.05)
                self.submit_s.append(time.perf_counter() - begin)
                self.acked[queued.id] = None
                try:
                    async for event in lesion.WatchExperiment(
                        service_pb2.WatchExperimentRequest(id=queued.id), metadata=metadata, timeout=600
                    ):
                        if event.experiment.status in FINAL:
                            self.acked[queued.id] = event.experiment.status
                except grpc.aio.AioRpcError as e:
                    self.errors.append(f"WatchExperiment {queued.id}: {e.code().name}: {e.details()}")
                    return
                self.end_to_end_s.append(time.perf_counter() - begin)

    async def run(self, pid):
        if self.args.duration is not None:
            self.deadline = time.monotonic() + self.args.duration
        peak_rss = 0

        async def sample():
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, proc_memory(pid)["VmRSS"])
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample())
        begin = time.perf_counter()
        await asyncio.gather(*(self.client(n) for n in range(self.args.clients)))
        wall = time.perf_counter() - begin
        sampler.cancel()
        return wall, peak_rss


def stored_states(address, ids):
    """{status name: count} of `ids` as the database holds them (ListExperiments, paged)."""
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 28)])
    lesion = service_pb2_grpc.LesionStub(channel)
    seen, offset = {}, 0
    while True:
        page = lesion.ListExperiments(
            service_pb2.ListExperimentsRequest(where='tag = "server-load"', limit=10000, offset=offset), timeout=60
        )
        seen.update((e.id, e.status) for e in page.experiments)
        offset += len(page.experiments)
        if not page.experiments or offset >= page.total:
            break
    channel.close()
    counts = {}
    for i in ids:
        name = service_pb2.ExperimentStatus.Name(seen[i]) if i in seen else "MISSING"
        counts[name] = counts.get(name, 0) + 1
    return counts


def main(argv):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="server-load-", dir=args.db_dir) as tmp:
        db = Path(tmp) / "lesion.db"
        server = Server(args, db)
        try:
            time.sleep(1)  # let start-up allocations settle before the idle reading
            before = proc_memory(server.proc.pid)
            load = Load(args, server.address)
            wall, peak_rss = asyncio.run(load.run(server.proc.pid))
            after = proc_memory(server.proc.pid)
            stored = stored_states(server.address, load.acked)
            database = db_bytes(db)
        finally:
            server.stop()

    watched = {}
    for status in load.acked.values():
        name = service_pb2.ExperimentStatus.Name(status) if status is not None else "UNFINISHED"
        watched[name] = watched.get(name, 0) + 1
    done = watched.get("DONE", 0)
    lost = sum(n for name, n in stored.items() if name not in ("DONE", "FAILED", "CANCELLED"))
    report = {
        "clients": args.clients,
        "acknowledged": len(load.acked),
        "wall_s": round(wall, 2),
        "experiments_per_s": round(done / wall, 2),
        "refused_queue_full": load.refused,
        "submit_ms": {
            "p50": round(percentile(load.submit_s, 50) * 1e3, 1),
            "p99": round(percentile(load.submit_s, 99) * 1e3, 1),
            "max": round(max(load.submit_s) * 1e3, 1),
            "mean": round(statistics.fmean(load.submit_s) * 1e3, 1),
        }
        if load.submit_s
        else None,
        "end_to_end_ms": {
            "p50": round(percentile(load.end_to_end_s, 50) * 1e3, 1),
            "p99": round(percentile(load.end_to_end_s, 99) * 1e3, 1),
        }
        if load.end_to_end_s
        else None,
        "watched_final": watched,
        "stored": stored,
        "lost": lost,
        "errors": load.errors[:10],
        "rss_mib": {
            "idle_before": round(before["VmRSS"] / MIB, 1),
            "after": round(after["VmRSS"] / MIB, 1),
            # VmHWM can lag a sample of VmRSS slightly (the kernel syncs its counters lazily).
            "peak": round(max(peak_rss, after["VmHWM"]) / MIB, 1),
        },
        "db_mib": round(database / MIB, 2),
        "bounds": {"max_rss_mib": args.max_rss_mib, "max_db_mib": args.max_db_mib},
        "lesiond_args": args.lesiond_arg,
        "cpus": os.cpu_count(),
        # lesiond inherits it; torch's intra-op pool size matters on a busy host (bench/README.md).
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    failures = []
    if lost or load.errors or watched.get("DONE", 0) != len(load.acked):
        failures.append(f"{lost} lost, {len(load.errors)} errors, {len(load.acked) - done} not done")
    if args.max_rss_mib is not None and report["rss_mib"]["peak"] > args.max_rss_mib:
        failures.append(f"peak RSS {report['rss_mib']['peak']} MiB > --max-rss-mib {args.max_rss_mib}")
    if args.max_db_mib is not None and report["db_mib"] > args.max_db_mib:
        failures.append(f"database {report['db_mib']} MiB > --max-db-mib {args.max_db_mib}")
    report["ok"] = not failures
    if args.json:
        print(json.dumps(report))
    else:
        s, e2e, rss = report["submit_ms"] or {}, report["end_to_end_ms"] or {}, report["rss_mib"]
        print(
            f"{args.clients} clients, {len(load.acked)} experiments acknowledged in {wall:.1f} s on "
            f"{os.cpu_count()} CPUs (OMP_NUM_THREADS={report['omp_num_threads'] or 'unset'}): "
            f"{report['experiments_per_s']} experiments/s"
        )
        print(
            f"Submit latency p50 {s.get('p50')} ms, p99 {s.get('p99')} ms, max {s.get('max')} ms; "
            f"submit to final p50 {e2e.get('p50')} ms, p99 {e2e.get('p99')} ms; "
            f"{load.refused} queue-full refusals retried"
        )
        print(f"final states seen: {watched}; stored: {stored}; lost: {lost}")
        print(
            f"lesiond RSS: {rss['idle_before']} MiB idle before, {rss['after']} MiB after, peak "
            f"{rss['peak']} MiB (VmHWM){'' if args.max_rss_mib is None else f' / bound {args.max_rss_mib}'}"
        )
        print(
            f"database: {report['db_mib']} MiB with its WAL"
            f"{'' if args.max_db_mib is None else f' / bound {args.max_db_mib}'}"
        )
        for failure in failures:
            print(f"FAILED: {failure}")
        for error in load.errors[:10]:
            print(f"error: {error}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
