"""POST /v1/embeddings: parse, call the embeddings service, write the answer."""
from __future__ import annotations

from .admission import admits, request
from .base import ApiHandler


@admits(POST=request("one embeddings call per model tried (its provider's timeout_s); "
                     "limits.max_embedding_input_mb of input text"))
class EmbeddingsHandler(ApiHandler):
    endpoint = "embeddings"

    async def post(self) -> None:
        body, raw = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/embeddings")
        answered = await self.guarded(self.svc.embeddings.create(model, body, raw,
                                                                 self.key_hash))
        if answered is not None:
            answer, served = answered
            self.served_by(served)
            self.write_json(answer)


routes = [(r"/v1/embeddings", EmbeddingsHandler)]
