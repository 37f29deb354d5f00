"""Image and video request parsing (apiarium/generation.py): the contract's fields (CONTRACT §3),
each bad value a 400 naming the field as sent, sizes as aspect ratios, and Veo's per-model
rules (wire-formats §6.4)."""
from __future__ import annotations

import pytest

from apiarium.errors import InvalidRequest
from apiarium.generation import (
    ImageRequest,
    Media,
    VideoRequest,
    image_request,
    job_request,
    nearest,
    size_ratio,
    video_request,
)

PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo="
VEO_30 = "veo-3.0-generate-001"
VEO_31 = "veo-3.1-fast-generate-preview"
VEO_2 = "veo-2.0-generate-001"


def refused(fn, body: dict, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        fn(body, *args)
    assert exc.value.status == 400
    return exc.value


# ---------------------------------------------------------------------------- images

def test_image_defaults():
    req = image_request({"prompt": "a fox"}, "gpt-image-1")
    assert req == ImageRequest("a fox", n=1, size="auto", response_format="url",
                               high_quality=False)
    assert req.ratio is None


def test_a_pro_alias_asks_for_high_quality():
    assert image_request({"prompt": "a fox"}, "gemini-3-image-pro").high_quality is True
    assert image_request({"prompt": "a fox"}, "gemini-3-image").high_quality is False
    assert image_request({"prompt": "a fox"}, "pro-image").high_quality is False


@pytest.mark.parametrize("n, want", [(1, 1), (10, 10), (3.0, 3), (None, 1)])
def test_image_n(n, want):
    assert image_request({"prompt": "p", "n": n}, "m").n == want


@pytest.mark.parametrize("n", [0, 11, -1, 2.5, "2", True, False, [1], {}])
def test_bad_n_is_400_naming_n(n):
    err = refused(image_request, {"prompt": "p", "n": n}, "m")
    assert err.param == "n" and "1 to 10" in err.message


@pytest.mark.parametrize("size, ratio", [
    ("1:1", 1.0), ("16:9", 16 / 9), ("9:16", 9 / 16), ("4:3", 4 / 3), ("3:4", 3 / 4),
    ("1024x1024", 1.0), ("1792x1024", 1.75), ("1024x1792", 1024 / 1792),
    ("1536x1024", 1.5), ("1024x1536", 1024 / 1536), ("512x512", 1.0), ("256x256", 1.0),
    ("auto", None), (None, None), ("", None)])
def test_every_contract_size_is_accepted_with_its_ratio(size, ratio):
    req = image_request({"prompt": "p", "size": size}, "m")
    assert req.size == (size or "auto")
    assert req.ratio == pytest.approx(ratio) if ratio else req.ratio is None


@pytest.mark.parametrize("size", ["800x600", "21:9", "1024X1024", "1:2", "large", 1024])
def test_bad_size_is_400_naming_size_and_listing_the_choices(size):
    err = refused(image_request, {"prompt": "p", "size": size}, "m")
    assert err.param == "size"
    assert "16:9" in err.message and "1024x1536" in err.message


@pytest.mark.parametrize("fmt, want", [("url", "url"), ("b64_json", "b64_json"),
                                       (None, "url")])
def test_image_response_format(fmt, want):
    assert image_request({"prompt": "p", "response_format": fmt}, "m").response_format == want


@pytest.mark.parametrize("fmt", ["base64", "png", "URL", 1])
def test_bad_response_format_is_400(fmt):
    err = refused(image_request, {"prompt": "p", "response_format": fmt}, "m")
    assert err.param == "response_format"


@pytest.mark.parametrize("body, code", [
    ({}, "missing_prompt"), ({"prompt": None}, "missing_prompt"),
    ({"prompt": ""}, "invalid_prompt"), ({"prompt": "   "}, "invalid_prompt"),
    ({"prompt": 7}, "invalid_prompt"), ({"prompt": ["a fox"]}, "invalid_prompt")])
def test_prompt_is_required_for_images_and_videos(body, code):
    for err in (refused(image_request, body, "m"), refused(video_request, body, VEO_31)):
        assert err.param == "prompt" and err.code == code


# ---------------------------------------------------------------------------- ratios

def test_size_ratio_reads_ratios_and_sizes():
    assert size_ratio("16:9") == pytest.approx(16 / 9)
    assert size_ratio("1536x1024") == 1.5
    assert size_ratio("auto") is None


def test_nearest_picks_the_closest_ratio_and_the_default_for_auto():
    # the Gemini image models' ratios (wire-formats §5.6)
    gemini = {"1:1": 1.0, "2:3": 2 / 3, "3:2": 1.5, "3:4": 0.75, "4:3": 4 / 3,
              "9:16": 9 / 16, "16:9": 16 / 9, "21:9": 21 / 9}
    # "1024x1024→1:1, 1536x1024→3:2, 1024x1536→2:3" (wire-formats §5.6)
    assert nearest(size_ratio("1024x1024"), gemini, "1:1") == "1:1"
    assert nearest(size_ratio("1536x1024"), gemini, "1:1") == "3:2"
    assert nearest(size_ratio("1024x1536"), gemini, "1:1") == "2:3"
    assert nearest(size_ratio("1792x1024"), gemini, "1:1") == "16:9"
    assert nearest(size_ratio("1024x1792"), gemini, "1:1") == "9:16"
    assert nearest(None, gemini, "1:1") == "1:1"
    assert nearest(None, {"a": 1.0}, "auto") == "auto"


def test_media_defaults_to_no_revised_prompt():
    m = Media(b"x", "image/png")
    assert (m.data, m.mime, m.revised_prompt) == (b"x", "image/png", "")


# ---------------------------------------------------------------------------- videos

def test_video_defaults():
    assert video_request({"prompt": "a boat"}, VEO_31) == VideoRequest(
        "a boat", duration_seconds=8, resolution="720p", aspect_ratio="16:9", image_url=None)


@pytest.mark.parametrize("duration, want", [
    (4, 4), (6, 6), (8, 8), ("4", 4), ("8", 8), (" 6 ", 6), (6.0, 6), (None, 8)])
def test_duration_seconds_as_string_or_number(duration, want):
    assert video_request({"prompt": "p", "duration_seconds": duration},
                         VEO_31).duration_seconds == want


@pytest.mark.parametrize("duration", [5, 7, 10, 12, "12", 0, -4, 6.5, "six", "", True, [8]])
def test_bad_duration_is_400_naming_it(duration):
    err = refused(video_request, {"prompt": "p", "duration_seconds": duration}, VEO_31)
    assert err.param == "duration_seconds" and "4, 6 or 8" in err.message


@pytest.mark.parametrize("resolution", ["480p", "4k", "1080", "1080P", 1080])
def test_bad_resolution_is_400(resolution):
    err = refused(video_request, {"prompt": "p", "resolution": resolution}, VEO_31)
    assert err.param == "resolution"


def test_aspect_ratio_and_its_alias_size():
    assert video_request({"prompt": "p", "aspect_ratio": "9:16"}, VEO_31).aspect_ratio == "9:16"
    assert video_request({"prompt": "p", "size": "9:16"}, VEO_31).aspect_ratio == "9:16"
    # aspect_ratio wins over size when both are given
    both = {"prompt": "p", "aspect_ratio": "16:9", "size": "9:16"}
    assert video_request(both, VEO_31).aspect_ratio == "16:9"


@pytest.mark.parametrize("field", ["aspect_ratio", "size"])
@pytest.mark.parametrize("value", ["1:1", "4:3", "1280x720", "16x9"])
def test_bad_ratio_is_400_naming_the_field_as_sent(field, value):
    err = refused(video_request, {"prompt": "p", field: value}, VEO_31)
    assert err.param == field and "16:9 or 9:16" in err.message


@pytest.mark.parametrize("url", [
    "https://example.com/first.png", "http://example.com/a.jpg?x=1", PNG_DATA_URL,
    "data:image/jpeg;name=a.jpg;base64,/9j/4AAQ", {"url": "https://example.com/a.png"}])
def test_image_url_for_image_to_video(url):
    req = video_request({"prompt": "p", "image_url": url}, VEO_31)
    assert req.image_url == (url["url"] if isinstance(url, dict) else url)


@pytest.mark.parametrize("url", [
    "ftp://example.com/a.png", "file:///etc/passwd", "example.com/a.png",
    "data:text/plain;base64,aGk=", "data:image/png,not-base64", "", 42, {"href": "x"},
    {"url": None}, "https://"])
def test_bad_image_url_is_400(url):
    err = refused(video_request, {"prompt": "p", "image_url": url}, VEO_31)
    assert err.param == "image_url"


def test_unknown_fields_are_ignored():
    req = video_request({"prompt": "p", "fps": 24, "seed": 3, "model": "veo-3"}, VEO_31)
    assert req == VideoRequest("p")


# ---------------------------------------------------------------------------- Veo rules

@pytest.mark.parametrize("upstream", [VEO_30, "veo-3.0-fast-generate-001"])
def test_veo_3_1080p_is_16_9_only(upstream):
    ok = video_request({"prompt": "p", "resolution": "1080p", "duration_seconds": 4}, upstream)
    assert (ok.resolution, ok.aspect_ratio, ok.duration_seconds) == ("1080p", "16:9", 4)
    assert video_request({"prompt": "p", "aspect_ratio": "9:16"}, upstream).resolution == "720p"
    err = refused(video_request, {"prompt": "p", "resolution": "1080p", "aspect_ratio": "9:16"},
                  upstream)
    assert err.param == "resolution" and "16:9" in err.message


@pytest.mark.parametrize("upstream", [VEO_31, "veo-3.1-generate-preview",
                                      "veo-3.1-lite-generate-preview"])
def test_veo_3_1_1080p_needs_8_seconds(upstream):
    for ratio in ("16:9", "9:16"):
        ok = video_request({"prompt": "p", "resolution": "1080p", "aspect_ratio": ratio},
                           upstream)
        assert ok.duration_seconds == 8
    for seconds in (4, 6):
        assert video_request({"prompt": "p", "duration_seconds": seconds},
                             upstream).resolution == "720p"
        err = refused(video_request, {"prompt": "p", "resolution": "1080p",
                                      "duration_seconds": seconds}, upstream)
        assert err.param == "resolution" and "8" in err.message


def test_veo_2_has_no_1080p():
    err = refused(video_request, {"prompt": "p", "resolution": "1080p"}, VEO_2)
    assert err.param == "resolution"
    assert video_request({"prompt": "p", "duration_seconds": 6}, VEO_2).resolution == "720p"


def test_veo_2_durations_are_5_6_or_8():
    """Veo 2 takes durationSeconds 5, 6 or 8 (wire-formats §6.4), not 4: a 4 s request for it
    is refused here, naming the field, rather than sent to fail upstream."""
    err = refused(video_request, {"prompt": "p", "duration_seconds": 4}, VEO_2)
    assert err.param == "duration_seconds"


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, (8, "720p", "16:9")),                                  # the defaults
    ({"seconds": "4", "size": "720x1280"}, (4, "720p", "9:16")),
    ({"seconds": 6, "size": "1280x720"}, (6, "720p", "16:9")),
    ({"size": "1792x1024"}, (8, "1080p", "16:9")),
    ({"size": "1024x1792"}, (8, "1080p", "9:16")),
    ({"size": "1920x1080"}, (8, "1080p", "16:9")),
])
def test_a_job_maps_seconds_and_size_to_veo(fields, expected):
    req = job_request({"prompt": "a bee", **fields}, "veo-3.1-generate-preview")
    assert (req.duration_seconds, req.resolution, req.aspect_ratio) == expected


@pytest.mark.parametrize(("fields", "upstream", "param"), [
    ({"seconds": "12"}, "veo-3.1-generate-preview", "seconds"),
    ({"seconds": "4"}, "veo-2.0-generate-001", "seconds"),      # Veo 2: 6 or 8 s
    ({"seconds": "4", "size": "1792x1024"}, "veo-3.1-generate-preview", "size"),  # 1080p: 8 s
    ({"size": "1024x1792"}, "veo-3.0-generate-001", "size"),    # Veo 3: 1080p in 16:9 only
    ({"size": "640x480"}, "veo-3.1-generate-preview", "size"),
])
def test_a_job_veo_cannot_make_is_400_naming_seconds_or_size(fields, upstream, param):
    with pytest.raises(InvalidRequest) as raised:
        job_request({"prompt": "a bee", **fields}, upstream)
    assert raised.value.param == param and f"`{param}`" in raised.value.message
