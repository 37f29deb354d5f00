"""The one table of model types: what each type is served on, shown as, and costs by default.

A model in models.yaml has a ``type`` (default ``chat``).  Everything that depends on the
type reads this table, so adding a type is one row here (plus the service that serves it):

* ``endpoints``: the API paths that accept a model of this type (the first is the one an
  error message points a confused client to);
* ``label`` / ``blurb``: the homepage group's heading and the endpoints it names;
* ``credits``: the default price of a model of this type (``catalog.Credits`` fields);
* ``provider_method``: the ``Provider`` method a kind must implement to serve the type
  (the config loader refuses a model whose provider kind lacks it);
* ``example``: optional, the openai-SDK call the homepage shows under the group (Python,
  ``{model}`` is the group's first model, already quoted; ``client`` is built above it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ModelType:
    name: str
    endpoints: tuple[str, ...]
    label: str
    blurb: str
    provider_method: str
    credits: Mapping[str, Any] = field(default_factory=dict)
    example: str = ""

    @property
    def home(self) -> str:
        """The endpoint to name when a model of this type is sent to the wrong one."""
        return self.endpoints[0]


_TABLE = (
    ModelType("chat", ("/v1/chat/completions", "/v1/completions", "/v1/responses",
                       "/v1/messages"), "Chat",
              "POST /v1/chat/completions, /v1/responses, /v1/messages and /v1/completions",
              "chat",
              {"per_1k_tokens": 1.0}),
    ModelType("image", ("/v1/images/generations", "/v1/chat/completions"), "Image",
              "POST /v1/images/generations", "image", {"image": 10.0}),
    ModelType("video", ("/v1/videos/generations", "/v1/chat/completions"), "Video",
              "POST /v1/videos/generations", "video",
              {"video_second": 10.0, "resolution": {"720p": 1.0, "1080p": 2.0}}),
    ModelType("embedding", ("/v1/embeddings",), "Embedding", "POST /v1/embeddings", "embed",
              {"per_1k_tokens": 0.1},            # per 1k input tokens (there is no output)
              example=("response = client.embeddings.create(\n"
                       "    model={model},\n"
                       "    input=[\"The bee visits the flower.\", \"Honey is sweet.\"],\n"
                       ")\n"
                       "print(len(response.data), \"vectors of\", "
                       "len(response.data[0].embedding), \"numbers\")")),
)

MODEL_TYPES: Mapping[str, ModelType] = MappingProxyType({t.name: t for t in _TABLE})


def serves(type_name: str, endpoint: str) -> bool:
    """Whether a model of ``type_name`` may be used on ``endpoint``."""
    return endpoint in MODEL_TYPES[type_name].endpoints
