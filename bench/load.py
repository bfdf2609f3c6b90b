"""Server load test (issue 6): throughput and latency of `POST /v1/generate` at 1, 4 and 16 concurrent clients,
with micro-batching (`--max-batch 16`) and one request at a time (`--max-batch 1`).

Each mode is a real `safemotion serve` process on a free loopback port (its own temporary database); both run at
once but only one is busy at a time. At each concurrency level the modes take turns (`--repeats` each), running
closed-loop clients (each sends its next request when the previous answer arrives) for `--rounds` requests per
client, so a change in the machine's load hits both modes alike. A request is one prompt, `--seconds` long, one
variation; prompts and seeds differ per request. Errors are non-200 answers or transport failures;
lost = sent - answered.

    .venv/bin/python bench/load.py --model path/to/model_dir --write
    .venv/bin/python bench/load.py --random-preset mini --write     # random weights, mini sizes (speed only)

`--ray` (issue 21) instead serves the model on Ray Serve (safemotion.serve.ray_app, a local Ray on loopback): one
application with 1 replica and one with 2 (1 torch thread each, deployed in turns; each replica is its own FastAPI
ingress), 16 clients, throughput, p50/p95, requests per model batch and the CPU seconds per request of each group of
processes (clients, proxy, replicas, Ray's own); then one 32-item batch job per application, counting items lost (not
done) and duplicated (computed more than once: claim attempts > 1, or more audit rows than items).

    .venv/bin/python bench/load.py --ray --model backend/safemotion/assets/models/safemotion-mini-lcr --write
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from results_md import RESULTS, publish

SECTION = "## Server load (issue 6)"
RAY_SECTION = "## Ray Serve scale-out (issue 21)"
RAY_REPLICAS = (1, 2)
REPLICA_GROUP = "model replicas (FastAPI app + model)"
RAY_GROUPS = ("load generator (HTTP clients) + Ray driver", "Serve HTTP proxy", REPLICA_GROUP, "Serve controller",
              "GCS", "raylet", "other Ray processes")  # CPU table order
REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = (16, 1)  # --max-batch of the micro-batching server and of the one-at-a-time server
PROMPTS = ["a person walks forward", "a person jumps twice", "someone waves with the right hand",
           "a man sits down on a chair", "a woman dances in a circle", "a person jogs in place",
           "a person climbs stairs", "a person turns around and walks back"]


def random_model(preset_name: str, out: Path) -> Path:
    """A model directory with random weights at a preset's sizes (non-zero codebooks, realistic feature scale)."""
    import torch

    from safemotion.models.model_dir import build_models, save_model_dir
    from safemotion.train.presets import preset

    torch.manual_seed(0)
    models = build_models(preset(preset_name))
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    models.std = np.full(models.config.vq.dim_pose, 0.1, np.float32)
    return save_model_dir(models.eval(), out, card=f"# random weights, {preset_name} preset (load benchmark)\n")


def model_ceiling(model: Path, seconds: float, threads: int, batch: int = 8, repeats: int = 3,
                  precision: str = "fp32") -> dict:
    """Model-only seconds per motion (text → joints, no SMPL, no HTTP) at batch 1 and at `batch`, in this process:
    the most any batching scheduler can gain on this machine is their ratio."""
    import torch

    from safemotion.decoding import SamplingConfig
    from safemotion.generate import GenerationRequest, Generator

    torch.set_num_threads(threads)
    generator = Generator.from_dir(model, device="cpu", sampling=SamplingConfig(precision=precision))

    def per_motion(count: int, repeat: int) -> float:
        requests = [GenerationRequest(PROMPTS[i % len(PROMPTS)], seconds, seed=100 * repeat + i) for i in range(count)]
        start = time.perf_counter()
        generator.generate(requests, smpl=False)
        return (time.perf_counter() - start) / count

    per_motion(1, repeats)  # warm-up
    single = min(per_motion(1, k) for k in range(repeats))
    batched = min(per_motion(batch, k) for k in range(repeats))
    return {"batch": batch, "single": single, "batched": batched}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `safemotion serve` process for one batching mode."""

    def __init__(self, model: Path, max_batch: int, threads: int, work: Path, precision: str = "fp32"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / f"server-batch{max_batch}.log", "wb")
        command = [sys.executable, "-m", "safemotion", "serve", "--port", str(self.port), "--model", str(model),
                   "--data-dir", str(work / f"data-batch{max_batch}"), "--max-batch", str(max_batch),
                   "--max-queue", "256", "--threads", str(threads), "--log-level", "warning",
                   "--precision", precision]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with status {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s; see {self.log.name}")

    def queue(self) -> dict:
        return httpx.get(f"{self.url}/v1/health", timeout=10).json()["queue"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def run_level(url: str, clients: int, rounds: int, seconds: float, first_seed: int) -> dict:
    """`clients` closed-loop clients sending `rounds` requests each: latencies, errors, requests sent, wall time.
    Each client is a thread with one keep-alive HTTP/1.1 connection (http.client: a far lighter client than httpx,
    so the load generator takes less of the CPU it shares with the server); every answer is read whole and parsed."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = [0]
    lock = threading.Lock()
    where = urlsplit(url)

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        try:
            for k in range(rounds):
                seed = first_seed + index * rounds + k
                body = json.dumps({"prompt": PROMPTS[seed % len(PROMPTS)], "seconds": seconds, "seed": seed})
                with lock:
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    connection.request("POST", f"{where.path}/v1/generate", body=body,
                                       headers={"Content-Type": "application/json"})
                    response = connection.getresponse()
                    answer = response.read()
                    problem = None if response.status == 200 and len(json.loads(answer)["motions"]) == 1 \
                        else f"HTTP {response.status}"
                except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
                    problem = f"{type(err).__name__}: {err}"
                    connection.close()  # the next request opens a fresh connection
                with lock:
                    if problem is None:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors.append(problem)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "sent": sent[0], "wall": time.perf_counter() - start}


def bench(model: Path, levels: list[int], rounds: dict[int, int], repeats: int, seconds: float, threads: int,
          work: Path, precision: str = "fp32") -> list[dict]:
    """Both modes served at once (only one busy at a time); at each level they take turns `repeats` times, so a
    change in the machine's load affects both alike."""
    servers = {max_batch: Server(model, max_batch, threads, work, precision) for max_batch in MODES}
    try:
        for server in servers.values():
            server.wait_ready()
            run_level(server.url, 2, 1, seconds, first_seed=10**6)  # warm-up: first-call costs
        rows = []
        for clients in levels:
            totals = {mode: {"latencies": [], "errors": [], "sent": 0, "wall": 0.0, "batches": 0, "load": []}
                      for mode in MODES}
            for repeat in range(repeats):
                for mode, server in servers.items():
                    before = server.queue()["batches"]
                    run = run_level(server.url, clients, rounds[clients], seconds,
                                    first_seed=10_000 * clients + 1000 * repeat)
                    total = totals[mode]
                    for key in ("latencies", "errors"):
                        total[key] += run[key]
                    total["sent"] += run["sent"]
                    total["wall"] += run["wall"]
                    total["batches"] += server.queue()["batches"] - before
                    total["load"].append(os.getloadavg()[0])
            for mode, total in totals.items():
                ok = len(total["latencies"])
                row = {"max_batch": mode, "clients": clients, "requests": total["sent"], "ok": ok,
                       "errors": len(total["errors"]), "lost": total["sent"] - ok - len(total["errors"]),
                       "throughput": ok / total["wall"],
                       "p50": float(np.percentile(total["latencies"], 50)) if ok else float("nan"),
                       "p99": float(np.percentile(total["latencies"], 99)) if ok else float("nan"),
                       "mean_batch": ok / total["batches"] if total["batches"] else float("nan"),
                       "load": float(np.mean(total["load"])), "error_kinds": sorted(set(total["errors"]))}
                rows.append(row)
                print(f"max-batch {mode:2d}, {clients:2d} clients: {row['throughput']:.2f} req/s, "
                      f"p50 {row['p50']:.2f} s, p99 {row['p99']:.2f} s, errors {row['errors']} {row['error_kinds']}, "
                      f"lost {row['lost']}, mean batch {row['mean_batch']:.1f}, load {row['load']:.1f}", flush=True)
        return rows
    finally:
        for server in servers.values():
            server.stop()


def ray_process_group(process, me: int) -> str:
    """Which part of the Ray run a psutil `process` is, for the CPU breakdown (only the application under load is
    deployed while a turn is timed, and its one deployment is the model replicas)."""
    if process.pid == me:
        return "load generator (HTTP clients) + Ray driver"
    title = " ".join(process.cmdline()) or process.name()
    for key, group in (("ray::ServeReplica:", REPLICA_GROUP), ("ray::ProxyActor", "Serve HTTP proxy"),
                       ("ray::ServeController", "Serve controller"), ("raylet", "raylet"), ("gcs_server", "GCS")):
        if key in title:
            return group
    return "other Ray processes"


def ray_cpu_seconds() -> dict[int, tuple[str, float]]:
    """User + system CPU seconds so far of this process and all its descendants (Ray's), with their groups."""
    import psutil  # Ray ships it (ray/thirdparty_files), importable once ray is imported

    me = psutil.Process()
    found = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                found[process.pid] = (ray_process_group(process, me.pid), times.user + times.system)
        except psutil.Error:  # it ended meanwhile
            continue
    return found


def cpu_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent per group between two ray_cpu_seconds snapshots (a process that started meanwhile counts
    whole; one that ended meanwhile is missing, which the replicas and proxies of a healthy run never do)."""
    spent: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        spent[group] = spent.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    return spent


def replica_batches(handle, replicas: int) -> dict[str, tuple[int, int]]:
    """(batches, motions) formed so far by each replica of a deployment, by actor name."""
    found: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while len(found) < replicas and time.monotonic() < deadline:
        me = handle.whoami.remote().result()
        found[me["actor"]] = (me["batches"], me["motions"])
        time.sleep(0.05)  # Serve routes at random: give the other replicas a turn without busy-looping
    if len(found) < replicas:
        raise RuntimeError(f"only {len(found)} of {replicas} replicas answered within 60 s")
    return found


def ray_job(url: str, db: str, replicas: int, seconds: float) -> dict:
    """One 32-item batch job: items done, lost (not done) and duplicated (computed more than once: claim attempts > 1,
    or more audit rows than items), how many replicas computed items, and the job's time."""
    from safemotion.serve.store import Store

    items = [{"prompt": PROMPTS[i % len(PROMPTS)], "seconds": seconds, "seed": 500 + i} for i in range(32)]
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as api:
        job = api.post("/v1/jobs", json={"items": items}).json()
        while (status := api.get(f"/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
            time.sleep(0.2)
    elapsed = time.perf_counter() - started
    store = Store(db)
    try:
        rows = store.job_items(job["id"])
        audited = [r for r in store.audit_entries(event="job_item", limit=10_000) if r["job_id"] == job["id"]]
    finally:
        store.close()
    return {"replicas": replicas, "items": len(items), "done": status["done"], "lost": len(items) - status["done"],
            "seconds": elapsed, "duplicated": sum(r["attempts"] > 1 for r in rows) + max(0, len(audited) - len(items)),
            "workers": len({r["claimed_by"] for r in rows})}


def ray_bench(model: Path, clients: int, rounds: int, repeats: int, seconds: float, threads: int, work: Path,
              max_batch: int = 16) -> tuple[list[dict], list[dict]]:
    """Applications of 1 and 2 replicas on one local Ray, taking turns under `clients` closed-loop clients (only the
    application of the turn is deployed, so the other's idle replicas take no CPU); after its last turn, a batch
    job on each. `max_batch`: the replicas' max_batch. Rows of request numbers (with
    CPU seconds per request by process group) and of job numbers."""
    import ray
    from ray import serve

    from safemotion.serve.ray_app import MODEL_DEPLOYMENT, build_app

    port = free_port()
    ray.init(num_cpus=sum(RAY_REPLICAS), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        totals = {n: {"latencies": [], "errors": [], "sent": 0, "wall": 0.0, "load": [], "cpu": {}, "batches": 0,
                      "motions": 0} for n in RAY_REPLICAS}
        jobs = []
        for repeat in range(repeats):
            for replicas in RAY_REPLICAS:
                name, url = f"replicas{replicas}", f"http://127.0.0.1:{port}/replicas{replicas}"
                db = f"sqlite:///{work / name}.db"
                serve.run(build_app({"model": str(model), "db_url": db, "replicas": replicas, "max_batch": max_batch,
                                     "max_queue": 256, "threads": threads, "device": "cpu"}),
                          name=name, route_prefix=f"/{name}")
                handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=name)
                run_level(url, 4, 1, seconds, first_seed=10**6)  # warm-up: first-call costs, every replica
                batched = replica_batches(handle, replicas)
                before = ray_cpu_seconds()
                run = run_level(url, clients, rounds, seconds, first_seed=1000 * repeat)
                total = totals[replicas]
                for group, spent in cpu_by_group(before, ray_cpu_seconds()).items():
                    total["cpu"][group] = total["cpu"].get(group, 0.0) + spent
                for actor, (batches, motions) in replica_batches(handle, replicas).items():
                    total["batches"] += batches - batched[actor][0]
                    total["motions"] += motions - batched[actor][1]
                for key in ("latencies", "errors"):
                    total[key] += run[key]
                total["sent"] += run["sent"]
                total["wall"] += run["wall"]
                total["load"].append(os.getloadavg()[0])
                if repeat == repeats - 1:
                    jobs.append(ray_job(url, db, replicas, seconds))
                    print(f"ray job, {replicas} replica(s): {jobs[-1]}", flush=True)
                serve.delete(name)
        rows = []
        for replicas, total in totals.items():
            ok = len(total["latencies"])
            rows.append({"replicas": replicas, "clients": clients, "requests": total["sent"], "ok": ok,
                         "errors": len(total["errors"]), "lost": total["sent"] - ok - len(total["errors"]),
                         "throughput": ok / total["wall"],
                         "p50": float(np.percentile(total["latencies"], 50)) if ok else float("nan"),
                         "p95": float(np.percentile(total["latencies"], 95)) if ok else float("nan"),
                         "load": float(np.mean(total["load"])), "error_kinds": sorted(set(total["errors"])),
                         "mean_batch": total["motions"] / total["batches"] if total["batches"] else float("nan"),
                         "cpu_per_request": {group: spent / max(ok, 1) for group, spent in total["cpu"].items()},
                         "cpu_share": {group: spent / total["wall"] for group, spent in total["cpu"].items()}})
            print(f"ray, {replicas} replica(s), {clients} clients: {rows[-1]['throughput']:.2f} req/s, "
                  f"p50 {rows[-1]['p50']:.2f} s, p95 {rows[-1]['p95']:.2f} s, errors {rows[-1]['errors']}, "
                  f"mean batch {rows[-1]['mean_batch']:.1f} motions, "
                  f"CPU ms per request: " + ", ".join(f"{group} {1000 * spent:.1f}" for group, spent
                                                      in sorted(rows[-1]["cpu_per_request"].items())), flush=True)
        return rows, jobs
    finally:
        serve.shutdown()
        ray.shutdown()


def cpu_table(rows: list[dict]) -> list[str]:
    """Markdown lines: CPU milliseconds per answered request and share of one core, per process group (the request
    path first, then Ray's background) and replica count, with the total outside the model replicas (the overhead
    per request that a second replica has to share the CPUs with)."""
    found = {group for r in rows for group in r["cpu_per_request"]}
    groups = [group for group in RAY_GROUPS if group in found] + sorted(found - set(RAY_GROUPS))
    lines = ["| process group | " + " | ".join(f"{r['replicas']} replica(s): ms per request, % of one core"
                                              for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for group in groups:
        lines.append(f"| {group} | " + " | ".join(
            f"{1000 * r['cpu_per_request'].get(group, 0.0):.1f}, {100 * r['cpu_share'].get(group, 0.0):.1f}%"
            for r in rows) + " |")
    outside = [sum(v for g, v in r["cpu_per_request"].items() if g != REPLICA_GROUP) for r in rows]
    lines.append("| **outside the model replicas** | " + " | ".join(f"**{1000 * o:.1f}**" for o in outside) + " |")
    return lines


def ray_section(rows: list[dict], jobs: list[dict], ceilings: dict[int, dict], model_note: str, seconds: float,
                threads: int, elapsed: float, max_batch: int = 16) -> str:
    """The markdown section of the Ray Serve rows; `ceilings`: model_ceiling at the largest batch each replica count
    can form from the clients."""
    by_replicas = {r["replicas"]: r for r in rows}
    ratio = by_replicas[2]["throughput"] / by_replicas[1]["throughput"] if by_replicas[1]["throughput"] else 0.0
    bad = sum(r["errors"] + r["lost"] for r in rows) + sum(j["lost"] + j["duplicated"] for j in jobs)
    verdict = "met" if ratio >= 1.7 and bad == 0 else "not met in this run"
    lines = [
        RAY_SECTION, "",
        "`bench/load.py --ray`: a local Ray on loopback; a Serve application of 1 model replica and one of 2 "
        "(each replica is its own FastAPI ingress; 1 torch thread and 1 Ray CPU per replica) take turns, only the "
        f"one whose turn it is deployed; {rows[0]['clients']} closed-loop HTTP clients (threads with keep-alive "
        f"http.client connections), `POST /v1/generate` of one {seconds:g}-second motion per request, SMPL fit "
        f"and encoding included (in the replicas); the replicas' `max_batch` {max_batch}. Model: {model_note}. CPU: {os.cpu_count()} cores, shared by the replicas with the clients, "
        "Serve's proxy and Ray's own processes (1-minute load average in the table, this run's own processes "
        f"included). Whole run: {elapsed / 60:.1f} min.", "",
        "| replicas | clients | requests | throughput (req/s) | p50 latency (s) | p95 latency (s) | errors | lost "
        "| mean batch (motions) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['replicas']} | {r['clients']} | {r['requests']} | {r['throughput']:.2f} | {r['p50']:.2f} | "
              f"{r['p95']:.2f} | {r['errors']} | {r['lost']} | {r['mean_batch']:.1f} | {r['load']:.1f} |"
              for r in rows]
    lines += ["", "CPU seconds (user + system, psutil) spent during the timed turns by each group of processes, "
                  "per answered request, and as a share of one core over the turns' wall time:", ""]
    lines += cpu_table(rows)
    lines += ["", "| replicas | job items | done | lost | duplicated | replicas that computed items | job time (s) |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {j['replicas']} | {j['items']} | {j['done']} | {j['lost']} | {j['duplicated']} | {j['workers']} | "
              f"{j['seconds']:.1f} |" for j in jobs]
    lines += ["", f"2 replicas ÷ 1 replica throughput: {ratio:.2f}×. Errors + lost + duplicated: {bad}. Target "
                  f"(≥ 1.7×, nothing lost or duplicated): {verdict}. Replica kills are covered by "
                  "tests/test_server_ray.py (0 lost, 0 repeated)."]
    one, two = (ceilings[n] for n in RAY_REPLICAS)
    lines += ["", f"Batching sets a bound of its own: the model alone (text → joints, the bench's process, {threads} "
                  f"torch thread(s), best of 3) takes {one['single']:.3f} s per motion at batch 1, {one['batched']:.3f} "
                  f"s at batch {one['batch']} (the largest batch {rows[0]['clients']} clients give one replica) and "
                  f"{two['batched']:.3f} s at batch {two['batch']} (two replicas, half the clients each): two "
                  f"replicas spend {two['batched'] / one['batched']:.2f}× the model time per motion of one, before "
                  "any overhead, while one replica's model thread leaves the other core to everything else."]
    return "\n".join(lines) + "\n"


def section(rows: list[dict], ceiling: dict, model_note: str, seconds: float, threads: int, elapsed: float) -> str:
    """The markdown section for bench/RESULTS.md."""
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    by_key = {(r["max_batch"], r["clients"]): r for r in rows}
    lines = [
        SECTION, "",
        "`bench/load.py`: one real `safemotion serve` process on loopback per mode, the modes taking turns at each "
        "level (so load changes hit both), closed-loop HTTP clients (threads with keep-alive http.client connections) in a separate process, "
        f"`POST /v1/generate` of one {seconds:g}-second motion per request "
        "(one variation, policy sanitize, prompts and seeds varying), SMPL fit and base64 encoding included. "
        f"Model: {model_note}. Server: `--threads {threads}` (torch threads of the model worker), default "
        "10 ms batching window; `--max-batch 16` = micro-batching, `--max-batch 1` = one request at a time. "
        f"CPU: {cpu}, {os.cpu_count()} cores shared with other jobs (1-minute load average in the table; the "
        f"machine was contended, so absolute numbers are noisy). p99 of a few dozen requests is close to the "
        f"maximum. Whole run: {elapsed / 60:.1f} min.", "",
        "| max batch | clients | requests | throughput (req/s) | p50 latency (s) | p99 latency (s) | errors | lost "
        "| mean batch (motions) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['throughput']:.2f} | "
                     f"{r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['lost']} | {r['mean_batch']:.1f} | "
                     f"{r['load']:.1f} |")
    lines.append("")
    speedups = []
    for clients in sorted({r["clients"] for r in rows}):
        batched, single = by_key.get((16, clients)), by_key.get((1, clients))
        if batched and single and single["throughput"] > 0:
            speedups.append(f"{clients} clients {batched['throughput'] / single['throughput']:.2f}×")
    errors = sum(r["errors"] + r["lost"] for r in rows)
    ratio = by_key[(16, 16)]["throughput"] / by_key[(1, 16)]["throughput"] if (16, 16) in by_key and (
        1, 16) in by_key else float("nan")
    verdict = "met" if ratio >= 3 and errors == 0 else "not met on this machine"
    lines += [
        f"Micro-batching throughput ÷ one-at-a-time: {', '.join(speedups)}. Errors + lost over all runs: {errors}. "
        f"Target (≥ 3× at 16 clients, no errors, nothing lost): {verdict}.", "",
        f"Ceiling: the model alone (text → joints, same process, {threads} torch thread(s), best of 3) takes "
        f"{ceiling['single']:.3f} s per motion at batch 1 and {ceiling['batched']:.3f} s at batch "
        f"{ceiling['batch']}, so batching can at most make generation "
        f"{ceiling['single'] / ceiling['batched']:.2f}× faster on this CPU: the model is compute-bound here even at "
        "batch 1. Hardware where batch 1 leaves the device idle (GPUs, many-core CPUs) gains far more.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory to serve")
    source.add_argument("--random-preset", help="serve random weights of this preset (mini, official)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, nargs="+", default=[3, 2, 2],
                        help="requests per client at each --clients level, per turn")
    parser.add_argument("--repeats", type=int, default=2, help="turns each mode takes at each level")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each generated motion")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server's model worker")
    parser.add_argument("--precision", default="fp32", help="of the token transformers: fp32, bf16 or int8")
    parser.add_argument("--ceiling-only", action="store_true", help="only the model-only ceiling, no servers")
    parser.add_argument("--write", action="store_true", help=f"write the section into {RESULTS}")
    parser.add_argument("--ray", action="store_true", help="Ray Serve rows: 1 vs 2 replicas at the last --clients "
                        "level (pip install 'safemotion[ray]')")
    parser.add_argument("--replica-max-batch", type=int, default=16, help="--ray: the replicas' max_batch")
    args = parser.parse_args(argv)
    if len(args.rounds) != len(args.clients):
        parser.error("--rounds needs one number per --clients level")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="safemotion-load-"))
    try:
        if args.model is not None:
            model, note = args.model, f"`{args.model}`"
        else:
            model = random_model(args.random_preset, work / f"random-{args.random_preset}")
            note = (f"random weights at the `{args.random_preset}` preset's sizes (`safemotion.train.presets."
                    f"{args.random_preset}()`; MiniLM text encoder; speed does not depend on training)")
        rounds = dict(zip(args.clients, args.rounds))
        if args.ray:
            clients = args.clients[-1]
            ceilings = {n: model_ceiling(model, args.seconds, args.threads, batch=clients // n) for n in RAY_REPLICAS}
            print(f"model only: {ceilings}", flush=True)
            rows, jobs = ray_bench(model, clients, rounds[clients], args.repeats, args.seconds, args.threads, work,
                                   args.replica_max_batch)
            text = ray_section(rows, jobs, ceilings, note, args.seconds, args.threads, time.perf_counter() - started,
                               args.replica_max_batch)
            publish(RAY_SECTION, text, write=args.write)
            return 0
        ceiling = model_ceiling(model, args.seconds, args.threads, precision=args.precision)
        print(f"model only ({args.precision}): {ceiling}", flush=True)
        if args.ceiling_only:
            return 0
        note += f"; transformers in {args.precision}"
        rows = bench(model, args.clients, rounds, args.repeats, args.seconds, args.threads, work, args.precision)
        text = section(rows, ceiling, note, args.seconds, args.threads, time.perf_counter() - started)
        publish(SECTION, text, write=args.write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
