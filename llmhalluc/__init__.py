"""llmhalluc: train language models to retract a wrong step with a backtrack token.

The stages in ``stages/`` are thin; the ideas they use live here, one module per
domain idea (params, backtrack, models, rewards, ...).
"""

__version__ = "0.1.0"
