"""Engines: the in-process ``local`` model and any ``openai``-compatible server."""

from degen.engines.base import Engine, available_engines, create_engine, register_engine

__all__ = ["Engine", "available_engines", "create_engine", "register_engine"]
