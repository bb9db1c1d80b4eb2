"""The black-box workflow around training: teacher answers from an OpenAI-compatible endpoint (`teacher`,
`openai_chat`), an LLM judge (`judge`), checkpoint evaluation and selection (`evaluation`, `checkpoint_selection`) and
the resumable JSONL store they write through (`jsonl_store`)."""
