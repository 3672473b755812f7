"""The Retriever deployment's class, outside Serve: real Chroma on disk, the real embedder. Queries that arrive
together are embedded in one pass, and each still gets its own answer."""

import asyncio

from deployments.retriever import Retriever
from serve_app.models import IngestDocument, IngestRequest
from serve_app.settings import Settings

TOPICS = {
    "volcano": "Volcanoes erupt molten lava and ash from magma chambers deep under the crust.",
    "violin": "The violin is a string instrument played with a bow, tuned in perfect fifths.",
    "tides": "Ocean tides rise and fall twice a day, pulled by the gravity of the moon.",
    "bread": "Sourdough bread rises with wild yeast and lactic bacteria instead of baker's yeast.",
}
QUESTIONS = {
    "volcano": "What comes out of an erupting volcano?",
    "violin": "How is a violin played?",
    "tides": "Why does the sea level change during the day?",
    "bread": "What makes sourdough rise?",
}


def test_concurrent_queries_share_one_embedding_pass_and_each_gets_its_own_answer(tmp_path, monkeypatch):
    from ray.serve import batching

    # The only part of serve.batch that needs a live replica: a warning that reads its max_ongoing_requests.
    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    retriever = Retriever.func_or_class(Settings(data_dir=tmp_path, retriever_batch_size=16))
    docs = [IngestDocument(source=f"{name}.md", text=text) for name, text in TOPICS.items()]

    async def scenario():
        await retriever.ingest(IngestRequest(collection="topics", documents=docs))
        passes = []
        embed = retriever._embedder.embed

        def counting_embed(texts):
            passes.append(len(texts))
            return embed(texts)

        retriever._embedder.embed = counting_embed
        names = list(QUESTIONS) * 2  # 8 queries at once
        answers = await asyncio.gather(*(retriever.retrieve(QUESTIONS[name], "topics", 1, -1.0) for name in names))
        return names, answers, passes

    names, answers, passes = asyncio.run(scenario())
    assert [a[0].source for a in answers] == [f"{name}.md" for name in names]
    assert sum(passes) == 8 and len(passes) < 8, passes  # batched, none lost or doubled
