"""mi_llm: teaching open LLMs to counsel with Motivational Interviewing, one stage per module."""

__version__ = "0.1.0"
