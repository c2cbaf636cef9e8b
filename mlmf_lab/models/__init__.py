"""Small reference models that load real weights through ``ml.load_into``."""

from .minilm import BertConfig, MiniLM

__all__ = ["BertConfig", "MiniLM"]
