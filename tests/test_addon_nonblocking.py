"""Generate, Batch and the edit operators never wait for the server on Blender's main thread (real bpy wheel, real
server behind a slow proxy).

A tiny stdlib HTTP proxy on loopback holds every request for DELAY_S seconds before passing it to the real
`safemotion serve`. What the modal operators run on the main thread (`GenerationJob.start` / `EditJob.start` or the
batch's set-up in invoke, `step` on each timer tick) must return within MAIN_THREAD_BOUND_S whatever the server does,
and the takes must still arrive; cancel and disabling the add-on while a request is in flight return at once, write
nothing, drop a submitted job on the server (a running batch keeps the jobs it records, for Resume), and leave no
request thread behind once its last request has answered. The bound is a behaviour (no call waits for a
request), not a benchmark: a blocking call would take at least DELAY_S.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

bpy = pytest.importorskip("bpy")

from addon_support import (  # noqa: E402
    ADDON_MODULE,
    addon,  # noqa: F401 (fixture)
    clean_scene,  # noqa: F401 (fixture)
    enable_addon,
    tiny_server,  # noqa: F401 (fixture)
    use_server,
)

DELAY_S = 2.0
MAIN_THREAD_BOUND_S = 0.5
PROMPT = "a person walks forward"


class SlowProxy:
    """A loopback HTTP proxy that sleeps DELAY_S before forwarding each request; it records what it forwarded."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.seen: list[str] = []  # "METHOD /path", in the order the requests arrived
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.seen.append(f"{self.command} {self.path.split('?')[0]}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(DELAY_S)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                answer = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                          timeout=60)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow(addon, clean_scene, tiny_server):
    """The scene's add-on talks to the real server through the slow proxy; one take of 1 s."""
    proxy = SlowProxy(tiny_server.url)
    use_server(proxy.url, timeout=30.0)
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.seed = PROMPT, 1.0, False, 8
    settings.skin_body = True  # one more request: the body model
    yield proxy
    proxy.close()


def timed(call, *args):
    """(result, seconds) of one main-thread call."""
    begin = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - begin


def step_until(job, condition, timeout: float = 60.0) -> list[float]:
    """Timer ticks (every POLL_INTERVAL_S, as the modal operator's timer) until `condition()`; their durations."""
    durations = []
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"stuck in state {job.state!r}: {job.settings.status}"
        _, seconds = timed(job.step, bpy.context)
        durations.append(seconds)
        time.sleep(0.05)
    return durations


def server_job(tiny_server, job_id: str) -> dict:
    return requests.get(f"{tiny_server.url}/v1/jobs/{job_id}", timeout=30).json()


def test_every_main_thread_call_returns_at_once_and_the_take_still_arrives(addon, slow):
    scene = bpy.context.scene
    began = time.monotonic()
    job, start_s = timed(addon.ops_generate.GenerationJob, bpy.context)
    _, seconds = timed(job.start, bpy.context)  # what invoke does
    start_s += seconds
    ticks = step_until(job, lambda: job.state == job.READY)
    outcome, finish_s = timed(job.finish, bpy.context)
    assert outcome.written == 1 and len(scene.safemotion.takes) == 1 and scene.safemotion.takes[0].seed == 8
    assert start_s < MAIN_THREAD_BOUND_S and max(ticks) < MAIN_THREAD_BOUND_S, (start_s, sorted(ticks)[-3:])
    print(f"invoke {start_s:.3f} s, {len(ticks)} ticks (longest {max(ticks):.3f} s), writing {finish_s:.3f} s")
    # Every request waited DELAY_S in the proxy: submit, at least one status poll, results, body model.
    assert slow.seen[0] == "POST /v1/jobs" and "GET /v1/body-model" in slow.seen
    assert any(s.endswith("/results") for s in slow.seen) and time.monotonic() - began >= 4 * DELAY_S
    assert job.requests.join(5.0)  # the request thread ended with the job
    assert addon.scene_guard.busy_reason(scene) is None


def test_cancel_while_the_submission_is_in_flight_drops_the_job_and_writes_nothing(addon, slow, tiny_server):
    scene_guard = addon.scene_guard
    before = scene_guard.Census.take()
    job = addon.ops_generate.GenerationJob(bpy.context)
    job.start(bpy.context)
    step_until(job, lambda: "POST /v1/jobs" in slow.seen)
    assert job.state == job.SUBMITTING  # the proxy holds the POST
    _, seconds = timed(bpy.ops.safemotion.cancel_generation)  # the panel's Cancel button
    assert seconds < MAIN_THREAD_BOUND_S and job.state == job.CANCELLED
    assert scene_guard.busy_reason(bpy.context.scene) is None
    with pytest.raises(addon.client.BackendError, match="cancelled"):
        job.step(bpy.context)
    assert job.requests.join(4 * DELAY_S + 30)  # submit answered, then its job was cancelled; the thread ended
    deletes = [s for s in slow.seen if s.startswith("DELETE /v1/jobs/")]
    assert len(deletes) == 1 and server_job(tiny_server, deletes[0].rsplit("/", 1)[1])["status"] in ("cancelled",
                                                                                                        "done")
    assert before.differences(scene_guard.Census.take()) == [] and bpy.context.scene.safemotion.job_id == ""


def test_a_server_error_arrives_on_a_later_tick_with_its_message(addon, slow):
    settings = bpy.context.scene.safemotion
    job = addon.ops_generate.GenerationJob(bpy.context)
    job.payload["items"][0]["seconds"] = 30.0  # a server with other limits than the add-on's: it refuses (422)
    job.start(bpy.context)
    with pytest.raises(addon.client.BackendError, match=r"refused the request: items\.0\.seconds") as caught:
        step_until(job, lambda: False, timeout=4 * DELAY_S + 30)
    assert caught.value.status == 422
    job.fail(str(caught.value))
    assert job.state == job.CANCELLED and settings.status.startswith(f"SafeMotion server at {slow.url} refused")
    assert len(bpy.data.objects) == 0 and len(settings.takes) == 0


def test_disabling_the_add_on_mid_request_returns_at_once_and_leaves_no_writer(addon, slow, tiny_server):
    job = addon.ops_generate.GenerationJob(bpy.context)
    job.start(bpy.context)
    step_until(job, lambda: job.state == job.RUNNING)
    step_until(job, lambda: any(s.startswith("GET /v1/jobs/") for s in slow.seen))  # a status poll is in flight
    job_id = job.job_id
    import addon_utils

    try:
        _, seconds = timed(addon_utils.disable, ADDON_MODULE)
        assert seconds < MAIN_THREAD_BOUND_S and job.state == job.CANCELLED
        assert job.requests.join(2 * DELAY_S + 30)  # the poll answered, the job was cancelled, the thread ended
        assert f"DELETE /v1/jobs/{job_id}" in slow.seen
        assert server_job(tiny_server, job_id)["status"] in ("cancelled", "done")
        assert len(bpy.data.objects) == 0 and len(bpy.data.actions) == 0
    finally:
        enable_addon()
        use_server(slow.url)


# --- Batch ------------------------------------------------------------------------------------------------------------

def batch_runner(addon, prompts: list[str]):
    """What Generate Batch's invoke does on the main thread: the batch read and laid out, a runner made and recorded;
    with the seconds it took."""
    ops = addon.ops_batch
    scene = bpy.context.scene
    begin = time.perf_counter()
    parsed = addon.batch_prompts.parse_text("\n".join(prompts), "prompts.txt")
    ops.start_batch(scene, parsed, "prompts.txt")
    runner = ops.BatchRunner(scene, bpy.context)
    addon.scene_guard.claim(scene, runner, "A batch")
    return runner, time.perf_counter() - begin


def tick_batch(runner, condition, timeout: float = 60.0) -> list[float]:
    """Timer ticks of the batch's modal operator (one prompt applied per tick at most) until `condition()`."""
    durations = []
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, [(i.name, i.state, i.message) for i in runner.batch.items]
        _, seconds = timed(runner.step, 1)
        durations.append(seconds)
        time.sleep(0.05)
    return durations


def test_batch_ticks_return_at_once_and_every_prompt_arrives_in_its_place(addon, slow):
    began = time.monotonic()
    runner, start_s = batch_runner(addon, ["a person walks", "a person jumps"])
    ticks = tick_batch(runner, runner.finished)
    batch = runner.batch
    assert [i.state for i in batch.items] == ["DONE", "DONE"] and len({i.job_id for i in batch.items}) == 1
    strips = batch.smpl_armature.animation_data.nla_tracks[addon.ops_batch.BATCH_TRACK].strips
    assert [(s.name, s.frame_start) for s in strips] == [(i.name, i.frame_start) for i in batch.items]
    assert start_s < MAIN_THREAD_BOUND_S and max(ticks) < MAIN_THREAD_BOUND_S, (start_s, sorted(ticks)[-3:])
    print(f"batch start {start_s:.3f} s, {len(ticks)} ticks (longest {max(ticks):.3f} s)")
    # Every request waited DELAY_S in the proxy: submit, at least one status poll with its results.
    assert slow.seen[0] == "POST /v1/jobs" and any(s.endswith("/results") for s in slow.seen)
    assert time.monotonic() - began >= 3 * DELAY_S
    assert runner.requests.join(5.0)  # the request thread ended with the batch
    addon.scene_guard.release(runner)


def test_cancel_batch_while_the_submission_is_in_flight_drops_the_job_and_writes_nothing(addon, slow, tiny_server):
    runner, _ = batch_runner(addon, ["a person walks", "a person jumps"])
    tick_batch(runner, lambda: "POST /v1/jobs" in slow.seen)
    assert runner.client is not None and not any(i.job_id for i in runner.batch.items)  # the proxy holds the POST
    _, seconds = timed(bpy.ops.safemotion.batch_cancel)  # the panel's button (Esc in the modal does the same)
    assert seconds < MAIN_THREAD_BOUND_S and [i.state for i in runner.batch.items] == ["CANCELLED"] * 2
    assert runner.step(1) == 0 and runner.requests.join(2 * DELAY_S + 30)  # submitted, then dropped; thread ended
    deletes = [s for s in slow.seen if s.startswith("DELETE /v1/jobs/")]
    assert len(deletes) == 1 and server_job(tiny_server, deletes[0].rsplit("/", 1)[1])["status"] in ("cancelled",
                                                                                                        "done")
    assert len(bpy.data.objects) == 0 and len(bpy.data.actions) == 0
    addon.scene_guard.release(runner)


def test_disabling_the_add_on_mid_poll_stops_the_batch_which_resume_continues(addon, slow, tiny_server):
    runner, _ = batch_runner(addon, ["a person walks"])
    tick_batch(runner, lambda: any(i.state == "QUEUED" for i in runner.batch.items))
    tick_batch(runner, lambda: any(s.startswith("GET /v1/jobs/") for s in slow.seen))  # a status poll is in flight
    job_id = runner.batch.items[0].job_id
    import addon_utils

    try:
        _, seconds = timed(addon_utils.disable, ADDON_MODULE)
        assert seconds < MAIN_THREAD_BOUND_S and runner.stopped.is_set()
        assert runner.requests.join(2 * DELAY_S + 30)  # the poll answered and was not read; the thread ended
        assert runner.step(1) == 0 and len(bpy.data.actions) == 0  # a later tick writes nothing
        assert not any(s.startswith("DELETE") for s in slow.seen)  # the job the batch records stays for Resume
    finally:
        enable_addon()
        use_server(slow.url, timeout=30.0)
    batch = bpy.context.scene.safemotion_batch
    assert [(i.state, i.job_id) for i in batch.items] == [("QUEUED", job_id)]
    assert bpy.ops.safemotion.batch_resume() == {"FINISHED"}  # background mode: the same ticks in a loop
    assert [i.state for i in batch.items] == ["DONE"] and batch.items[0].job_id == job_id


# --- Edit operators ---------------------------------------------------------------------------------------------------

@pytest.fixture
def take(addon, slow, tiny_server):
    """One take of 1 s generated straight from the server (no proxy); the add-on then talks through the proxy."""
    use_server(tiny_server.url, timeout=30.0)
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    use_server(slow.url, timeout=30.0)
    del slow.seen[:]
    settings = bpy.context.scene.safemotion
    settings.prompt, settings.skin_body = "a person jumps", False
    return settings.takes[0]


def extend_job(addon, take):
    """What Extend Take's invoke makes: the edit job of 1 s after the take."""
    source, _ = addon.ops_edit.take_source(take)
    payload = addon.ops_edit.edit_payload(bpy.context, source, extend_seconds=1.0, extend_at="end")
    return addon.ops_generate.EditJob(bpy.context, payload, take.frame_start)


def test_an_edit_returns_at_once_on_every_tick_and_its_take_still_arrives(addon, slow, take):
    settings = bpy.context.scene.safemotion
    frames = take.frames
    job, start_s = timed(extend_job, addon, take)
    _, seconds = timed(job.start, bpy.context)
    start_s += seconds
    assert addon.ops_generate.running_job(bpy.context.scene) is job  # the Cancel button and a file load find it
    ticks = step_until(job, lambda: job.state == job.READY)
    outcome = job.finish(bpy.context)
    assert outcome.written == 1 and len(settings.takes) == 2 and settings.takes[1].frames > frames
    assert start_s < MAIN_THREAD_BOUND_S and max(ticks) < MAIN_THREAD_BOUND_S, (start_s, sorted(ticks)[-3:])
    print(f"edit start {start_s:.3f} s, {len(ticks)} ticks (longest {max(ticks):.3f} s)")
    assert slow.seen == ["POST /v1/edit"] and job.requests.join(5.0)
    assert addon.scene_guard.busy_reason(bpy.context.scene) is None


def test_cancelling_an_edit_in_flight_returns_at_once_and_writes_nothing(addon, slow, take):
    before = addon.scene_guard.Census.take()
    job = extend_job(addon, take)
    job.start(bpy.context)
    step_until(job, lambda: "POST /v1/edit" in slow.seen)
    _, seconds = timed(bpy.ops.safemotion.cancel_generation)  # the panel's Cancel button
    assert seconds < MAIN_THREAD_BOUND_S and job.state == job.CANCELLED
    with pytest.raises(addon.client.BackendError, match="Edit cancelled"):
        job.step(bpy.context)
    assert job.requests.join(2 * DELAY_S + 30)  # the edit answered, nobody read it; the thread ended
    assert before.differences(addon.scene_guard.Census.take()) == []
    assert bpy.context.scene.safemotion.status == "Edit cancelled; nothing was written"
