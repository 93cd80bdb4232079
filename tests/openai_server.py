"""The local OpenAI-compatible server lives in the package (mi_llm/llm/openai_server.py), where the dry run
uses it too; tests import it under this short name."""

from mi_llm.llm.openai_server import BaseURL, Stats, serve  # noqa: F401
