"""The backtrack mechanism: one token that retracts what came before it, by a unit recorded with the model.

One module per job, imported by name (``from llmhalluc.backtrack.retraction import Retraction``):
- token: the token in a model's vocabulary: added with its embedding rows initialised (sft.backtrack.init), found;
- encoding: SFT examples in token ids, each error followed by the backtracks that retract it;
- retraction: what one backtrack retracts (sft.backtrack.unit, read back from lineage) and resolution by it;
- reach: helping training reach the token (sft.backtrack.lr_multiplier, grpo.rollout_backtrack_bias).
"""
