"""Video jobs in the OpenAI SDK's shape (issue 16): POST/GET/DELETE /v1/videos,
/v1/videos/{id}/content, driven by the ``openai`` SDK and curl against the Veo fake; the
answers checked with the SDK's own types; jobs owned by their key; seconds and size mapped
or refused; multipart and URL input references; a job started before a restart completes
after it, charged once; a killed gateway's job taken over by housekeeping once its lease
expires; expiry; rate limits and credits on both video endpoints."""
from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import time

import openai
import pytest
from openai.types import Video, VideoDeleteResponse

from apiarium import app as app_module
from apiarium.handlers.files import StoredFile
from apiarium.handlers.videos import VideoContentHandler
from tests.fakes import make_png
from tests.support import MASTER_KEY, error_of, request, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

PNG = make_png(16, 9)
FAST = 20                        # ms between the SDK's polls here


def models(gm, poll=0.02) -> dict:
    google = {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
              "poll_interval_s": poll, "timeout_s": 30}
    return {"providers": {"google": google},
            "models": {
                "veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001",
                          "type": "video"},
                "veo-3.1-fast": {"provider": "google", "type": "video",
                                 "upstream": "veo-3.1-fast-generate-preview"},
                "gemini-3-image": {"provider": "google", "type": "image",
                                   "upstream": "gemini-3-pro-image-preview"}}}


LIMITS = {"rpm": 100, "endpoints": {"videos": "100/hour"}}


@pytest.fixture
def gw(make_gateway, fake_gemini):
    return make_gateway(models(fake_gemini), rate_limit=LIMITS)


def veo_starts(fake):
    return [r for r in fake.requests if r.path.endswith(":predictLongRunning")]


def usage(gw, ip: str) -> dict:
    return json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]


def raw_job(gw, job_id: str, key: str, ip: str = "127.0.0.1"):
    return gw.get(f"/v1/videos/{job_id}", key=key, ip=ip)


# ---------------------------------------------------------------------------- the SDK

def test_sdk_create_and_poll_download_list_retrieve_delete(gw, fake_gemini):
    ip = "127.0.0.71"
    key = gw.key_for(ip)
    client = gw.sdk(key, ip=ip)
    video = client.videos.create_and_poll(model="veo-3.1-fast", prompt="a paper boat",
                                          seconds="8", size="1280x720", poll_interval_ms=FAST)
    assert (video.status, video.progress, video.seconds, video.size) == \
        ("completed", 100, "8", "1280x720")
    assert video.id.startswith("video_") and len(video.id) >= 38
    assert video.model == "veo-3.1-fast" and video.prompt == "a paper boat"
    assert video.error is None and video.completed_at >= video.created_at
    assert video.expires_at == video.completed_at + 24 * 3600      # media.ttl_hours
    start = veo_starts(fake_gemini)[-1].json
    assert start["parameters"] == {"aspectRatio": "16:9", "resolution": "720p",
                                   "durationSeconds": 8, "sampleCount": 1}
    # the answer as sent is the SDK's Video exactly (validated, not just constructed)
    status, headers, raw = raw_job(gw, video.id, key, ip)
    assert status == 200 and Video.model_validate(json.loads(raw)) == video
    assert "openai-poll-after-ms" not in headers                   # finished: nothing to wait

    content = client.videos.download_content(video.id)
    assert content.content == fake_gemini.video_bytes
    assert content.response.headers["content-type"] == "video/mp4"
    status, headers, body = request(f"{gw.url}/v1/videos/{video.id}/content", ip=ip,
                                    headers={"Authorization": f"Bearer {key}",
                                             "Range": "bytes=100-199"})
    assert status == 206 and body == fake_gemini.video_bytes[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(fake_gemini.video_bytes)}"
    size = len(fake_gemini.video_bytes)
    status, headers, body = request(f"{gw.url}/v1/videos/{video.id}/content", ip=ip,
                                    headers={"Authorization": f"Bearer {key}",
                                             "Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    assert json.loads(body)["error"]["code"] == "range_not_satisfiable"
    status, headers, body = request(f"{gw.url}/v1/videos/{video.id}/content", ip=ip,
                                    headers={"Authorization": f"Bearer {key}",
                                             "Range": "bytes=9-3"})         # ignored
    assert status == 200 and body == fake_gemini.video_bytes
    # the stored-file rules (handlers/files.py), as /media/{name} serves them too
    assert headers["cache-control"] == "private, max-age=3600, immutable"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    status, _, body = request(f"{gw.url}/v1/videos/{video.id}/content", ip=ip,
                              headers={"Authorization": f"Bearer {key}",
                                       "If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    assert issubclass(VideoContentHandler, StoredFile)

    # two more, left rendering: a job answer tells the SDK how long to wait
    fake_gemini.veo_polls_until_done = 10 ** 6
    more = [client.videos.create(model="veo-3", prompt=f"take {i}", seconds="4",
                                 size="720x1280") for i in (2, 3)]
    assert [m.status for m in more] == ["queued", "queued"]
    assert wait_for(lambda: len(veo_starts(fake_gemini)) == 3)
    status, headers, _ = raw_job(gw, more[0].id, key, ip)
    assert status == 200 and headers["openai-poll-after-ms"] == "2000"
    assert veo_starts(fake_gemini)[-1].json["parameters"]["aspectRatio"] == "9:16"

    page = client.videos.list(limit=2)
    assert [v.id for v in page.data] == [more[1].id, more[0].id]     # newest first
    assert page.has_more is True and page.last_id == more[0].id
    assert [v.id for v in client.videos.list(limit=2, after=page.last_id).data] == [video.id]
    assert [v.id for v in client.videos.list(limit=2)] == \
        [more[1].id, more[0].id, video.id]                           # the SDK pages on
    assert [v.id for v in client.videos.list(order="asc")] == \
        [video.id, more[0].id, more[1].id]
    assert client.videos.retrieve(more[0].id).status in ("queued", "in_progress")

    gone = client.videos.delete(video.id)
    assert isinstance(gone, VideoDeleteResponse) and (gone.id, gone.deleted) == (video.id, True)
    with pytest.raises(openai.NotFoundError) as exc:
        client.videos.retrieve(video.id)
    assert exc.value.body["code"] == "video_not_found"
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    assert [v.id for v in client.videos.list()] == [more[1].id, more[0].id]
    assert usage(gw, ip)["video_seconds"] == 8                       # charged once, kept


def test_another_key_sees_404_exactly_as_for_a_missing_id(gw, fake_gemini):
    a, b = gw.key_for("127.0.0.72"), gw.key_for("127.0.0.73")
    mine = gw.sdk(a, ip="127.0.0.72").videos.create_and_poll(
        model="veo-3", prompt="mine", poll_interval_ms=FAST)
    assert mine.status == "completed"
    missing = "video_" + "x" * 32
    for method, path in (("GET", "/v1/videos/{}"), ("GET", "/v1/videos/{}/content"),
                         ("DELETE", "/v1/videos/{}")):
        answers = []
        for job_id in (mine.id, missing):
            status, _, raw = request(gw.url + path.format(job_id), method, ip="127.0.0.73",
                                     headers={"Authorization": f"Bearer {b}"})
            err = error_of(raw)
            answers.append((status, err["code"], err["message"].replace(job_id, "ID")))
        assert answers[0] == answers[1] and answers[0][:2] == (404, "video_not_found")
    assert gw.sdk(b, ip="127.0.0.73").videos.list().data == []
    assert raw_job(gw, mine.id, a, "127.0.0.72")[0] == 200            # still there
    status, _, raw = gw.get("/v1/videos", ip="127.0.0.73")
    assert status == 401 and error_of(raw)["code"] == "missing_api_key"


@pytest.mark.parametrize(("body", "param"), [
    ({"seconds": "12"}, "seconds"),
    ({"seconds": 5}, "seconds"),
    ({"size": "1024x1024"}, "size"),
    ({"size": ["1280x720"]}, "size"),
    ({"seconds": {"n": 4}}, "seconds"),
    ({"size": "1024x1792"}, "size"),          # 1080p 9:16: veo-3.0 makes 1080p in 16:9 only
    ({"prompt": ""}, "prompt"),
    ({"input_reference": {"file_id": "file-1"}}, "input_reference"),
    ({"input_reference": "ftp://x/y.png"}, "input_reference"),
])
def test_fields_veo_cannot_take_are_400_naming_the_field(gw, fake_gemini, body, param):
    sent = {"model": "veo-3", "prompt": "x", **body}
    status, _, raw = gw.post("/v1/videos", sent, key=MASTER_KEY)
    err = error_of(raw)
    assert (status, err["param"]) == (400, param), err
    assert f"`{param}" in err["message"]
    assert veo_starts(fake_gemini) == []


def test_a_private_url_as_input_reference_is_refused_before_anything_starts(gw, fake_gemini):
    for url in ("http://10.1.2.3/frame.png", "http://127.0.0.1:9/frame.png",
                "http://[::1]/frame.png"):
        status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "x",
                                                "input_reference": {"image_url": url}},
                                 key=MASTER_KEY)
        err = error_of(raw)
        assert (status, err["param"]) == (400, "input_reference"), err
    assert veo_starts(fake_gemini) == []
    assert json.loads(gw.get("/v1/videos", key=MASTER_KEY)[2])["data"] == []


# ---------------------------------------------------------------------------- multipart

def curl(gw, *form: str) -> tuple[int, dict]:
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-w", "\n%{http_code}", f"{gw.url}/v1/videos",
         "-H", f"Authorization: Bearer {MASTER_KEY}", *[a for f in form for a in ("-F", f)]],
        capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def test_curl_multipart_png_reaches_veo_as_the_first_frame(gw, fake_gemini, tmp_path):
    png = tmp_path / "frame.png"
    png.write_bytes(PNG)
    status, job = curl(gw, "model=veo-3", "prompt=the boat sails on", "seconds=4",
                       "size=1280x720", f"input_reference=@{png};type=image/png")
    assert status == 200, job
    assert Video.model_validate(job).status == "queued"
    assert wait_for(lambda: veo_starts(fake_gemini))          # the render starts on its own
    instance = veo_starts(fake_gemini)[-1].json["instances"][0]
    assert instance["prompt"] == "the boat sails on"
    assert instance["image"] == {"bytesBase64Encoded": base64.b64encode(PNG).decode(),
                                 "mimeType": "image/png"}
    # a file that is no image, whatever it claims, is refused
    fake = tmp_path / "frame2.png"
    fake.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    status, body = curl(gw, "model=veo-3", "prompt=x", f"input_reference=@{fake};type=image/png")
    assert status == 400 and body["error"]["param"] == "input_reference"
    assert len(veo_starts(fake_gemini)) == 1


def test_the_sdk_uploads_an_input_reference_file(gw, fake_gemini):
    client = gw.sdk(MASTER_KEY)
    video = client.videos.create_and_poll(model="veo-3", prompt="from a frame",
                                          input_reference=("f.png", PNG, "image/png"),
                                          poll_interval_ms=FAST)
    assert video.status == "completed"
    image = veo_starts(fake_gemini)[-1].json["instances"][0]["image"]
    assert base64.b64decode(image["bytesBase64Encoded"]) == PNG


# ---------------------------------------------------------------------------- lifecycle

def test_a_job_started_before_a_restart_completes_after_it_charged_once(gw, fake_gemini):
    ip = "127.0.0.74"
    key = gw.key_for(ip)
    fake_gemini.veo_polls_until_done = 10 ** 6                 # Veo holds it unfinished
    job = gw.sdk(key, ip=ip).videos.create(model="veo-3", prompt="survive", seconds="6")
    assert wait_for(lambda: json.loads(raw_job(gw, job.id, key, ip)[2])["status"] ==
                    "in_progress")                             # the operation is stored
    polls = dict(fake_gemini.veo_polls)
    gw.stop()                                                  # every task and buffer gone
    fake_gemini.veo_polls_until_done = 0                       # Veo finishes meanwhile
    gw.start()
    client = gw.sdk(key, ip=ip)
    assert wait_for(lambda: client.videos.retrieve(job.id).status == "completed", timeout=10)
    assert client.videos.retrieve(job.id).progress == 100
    assert client.videos.download_content(job.id).content == fake_gemini.video_bytes
    assert len(veo_starts(fake_gemini)) == 1                   # polled again, not re-rendered
    assert [op for op in fake_gemini.veo_polls if fake_gemini.veo_polls[op] > polls[op]]
    assert usage(gw, ip)["video_seconds"] == 6
    gw.stop()                                                  # and once more: no second charge
    gw.start()
    assert usage(gw, ip)["video_seconds"] == 6
    assert gw.sdk(key, ip=ip).videos.retrieve(job.id).status == "completed"


def test_housekeeping_takes_over_a_job_whose_gateway_was_killed(gw, fake_gemini, monkeypatch):
    """A gateway killed outright leaves its job leased (as written here, to a process that
    is gone, for 1.5 s more): the gateway started next leaves it at start-up, then its
    housekeeping takes it over once the lease expires, completes it, charges it once."""
    monkeypatch.setattr(app_module, "TAKEOVER_S", 0.0)       # every round (2 s), not 10 s
    ip = "127.0.0.78"
    key = gw.key_for(ip)
    fake_gemini.veo_polls_until_done = 10 ** 6
    job = gw.sdk(key, ip=ip).videos.create(model="veo-3", prompt="orphan", seconds="4")
    assert wait_for(lambda: json.loads(raw_job(gw, job.id, key, ip)[2])["status"] ==
                    "in_progress")
    gw.stop()
    con = sqlite3.connect(gw.dir.parent / "data" / "apiarium.sqlite3")
    con.execute("UPDATE video_jobs SET lease_owner = 'gone:1:dead', lease_until = ?",
                (time.time() + 1.5,))
    con.commit()
    con.close()
    fake_gemini.veo_polls_until_done = 0
    gw.start()
    assert job.id not in gw.app.services.jobs.tasks            # leased to the dead one
    client = gw.sdk(key, ip=ip)
    assert client.videos.retrieve(job.id).status == "in_progress"
    assert wait_for(lambda: client.videos.retrieve(job.id).status == "completed", timeout=10)
    assert usage(gw, ip)["video_seconds"] == 4


def test_an_expired_jobs_content_is_gone(gw, fake_gemini):
    client = gw.sdk(MASTER_KEY)
    video = client.videos.create_and_poll(model="veo-3", prompt="fleeting",
                                          poll_interval_ms=FAST)
    jobs = gw.app.services.jobs
    jobs.clock = lambda: video.expires_at + 1                  # a day later
    status, _, raw = raw_job(gw, video.id, MASTER_KEY)
    shown = Video.model_validate_json(raw)       # still the SDK's type: no status of our own
    assert status == 200 and shown.status == "completed" and shown.expires_at == video.expires_at
    status, _, raw = request(f"{gw.url}/v1/videos/{video.id}/content",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert status == 404 and error_of(raw)["code"] == "video_expired"


def test_a_failed_render_is_a_failed_job_with_the_reason(gw, fake_gemini):
    fake_gemini.veo_filtered_next()
    video = gw.sdk(MASTER_KEY).videos.create_and_poll(model="veo-3", prompt="x",
                                                      poll_interval_ms=FAST)
    assert video.status == "failed" and video.error is not None
    assert video.error.code == "content_policy_violation" and "safety" in video.error.message
    status, _, raw = request(f"{gw.url}/v1/videos/{video.id}/content",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert status == 404 and error_of(raw)["code"] == "video_not_ready"


def test_the_blocking_endpoint_is_a_job_listed_by_get_videos(gw, fake_gemini):
    status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "wait"},
                             key=MASTER_KEY)
    assert status == 200, raw
    (job,) = json.loads(gw.get("/v1/videos", key=MASTER_KEY)[2])["data"]
    assert (job["status"], job["prompt"], job["size"], job["seconds"]) == \
        ("completed", "wait", "1280x720", "8")


# ---------------------------------------------------------------------------- limits

def test_rate_limit_and_credits_apply_to_both_video_endpoints(make_gateway, fake_gemini):
    gw = make_gateway(models(fake_gemini), rate_limit={"rpm": 100, "daily_credits": 100,
                                                       "endpoints": {"videos": "2/hour"}})
    ip = "127.0.0.75"
    key = gw.key_for(ip)
    # 8 s of veo-3 is 80 credits (10 a second): one fits in 100, a second does not
    status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "a"}, key=key, ip=ip)
    assert status == 200, raw
    status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "b"}, key=key, ip=ip)
    assert status == 429 and error_of(raw)["code"] == "insufficient_quota"
    codes = []
    other = gw.key_for("127.0.0.76")
    for path in ("/v1/videos", "/v1/videos/generations", "/v1/videos"):
        status, _, raw = gw.post(path, {"model": "veo-3", "prompt": "c", "seconds": "4",
                                        "duration_seconds": 4}, key=other, ip="127.0.0.76")
        codes.append(status)
    assert codes == [200, 200, 429]                          # one bucket: 2 an hour in all
    assert error_of(raw)["code"] == "rate_limit_exceeded"
    assert gw.get("/v1/videos", key=other, ip="127.0.0.76")[0] == 200   # GETs are not limited


def test_a_reload_resumes_a_job_no_render_here_waits_on(gw, fake_gemini):
    """SIGHUP's reload polls again the unfinished jobs that have an operation and no task in
    this process (here the task is cancelled, as a render of another process that died)."""
    fake_gemini.veo_polls_until_done = 10 ** 6
    client = gw.sdk(MASTER_KEY)
    job = client.videos.create(model="veo-3", prompt="orphan", seconds="4")
    assert wait_for(lambda: client.videos.retrieve(job.id).status == "in_progress")

    async def drop() -> None:
        task = gw.app.services.jobs.tasks[job.id]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    gw._call(drop(), 5)
    assert job.id not in gw.app.services.jobs.tasks
    assert client.videos.retrieve(job.id).status == "in_progress"   # nobody polls it now
    fake_gemini.veo_polls_until_done = 0
    assert gw.reload()
    assert wait_for(lambda: client.videos.retrieve(job.id).status == "completed", timeout=10)
    assert client.videos.download_content(job.id).content == fake_gemini.video_bytes


def test_hostile_uploads_and_queries_are_400_naming_the_field(make_gateway, fake_gemini,
                                                              tmp_path):
    gw = make_gateway(models(fake_gemini), media={"image_url_max_mb": 0.001})   # ~1 KB
    big = tmp_path / "big.png"
    big.write_bytes(make_png(64, 64) + b"\0" * 4096)
    status, body = curl(gw, "model=veo-3", "prompt=x", f"input_reference=@{big};type=image/png")
    assert status == 400 and body["error"]["param"] == "input_reference"
    assert "at most 1,048 bytes (got 4," in body["error"]["message"]
    status, _, raw = request(f"{gw.url}/v1/videos", "POST", b"--nope\r\n\r\n",
                             {"Authorization": f"Bearer {MASTER_KEY}",
                              "Content-Type": "multipart/form-data; boundary=zzz"})
    assert status == 400 and error_of(raw)["code"] == "invalid_multipart"
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                         ("order=sideways", "order")):
        status, _, raw = gw.get(f"/v1/videos?{query}", key=MASTER_KEY)
        assert status == 400 and error_of(raw)["param"] == param, query
    status, _, raw = gw.get("/v1/videos/video_x/content?variant=thumbnail", key=MASTER_KEY)
    assert status == 400 and error_of(raw)["param"] == "variant"
    status, _, raw = gw.post("/v1/videos", {"model": "gemini-3-image", "prompt": "x"},
                             key=MASTER_KEY)
    assert status == 400 and error_of(raw)["code"] == "model_type_mismatch"
    assert veo_starts(fake_gemini) == []


def test_jobs_on_postgresql_survive_a_restart(postgres_url, make_gateway, fake_gemini,
                                              tmp_path):
    """The database outlives the gateway (it is set up first, dropped last)."""
    gw = make_gateway(models(fake_gemini), rate_limit=LIMITS, database=postgres_url,
                      secret_file=str(tmp_path / "shared" / "apiarium.secret"))
    ip = "127.0.0.77"
    key = gw.key_for(ip)
    client = gw.sdk(key, ip=ip)
    first = client.videos.create_and_poll(model="veo-3", prompt="one", poll_interval_ms=FAST)
    assert first.status == "completed"
    fake_gemini.veo_polls_until_done = 10 ** 6
    second = client.videos.create(model="veo-3", prompt="two", seconds="4")
    assert wait_for(lambda: client.videos.retrieve(second.id).status == "in_progress")
    gw.stop()
    fake_gemini.veo_polls_until_done = 0
    gw.start()
    client = gw.sdk(key, ip=ip)
    assert wait_for(lambda: client.videos.retrieve(second.id).status == "completed", timeout=10)
    assert [v.id for v in client.videos.list()] == [second.id, first.id]
    assert usage(gw, ip)["video_seconds"] == 8 + 4
