"""params.yaml: load one section, validate it strictly, resolve what the stage runs with.

    section = load_section("grpo")          # ParamsError (exit 2) on any problem
    config = trl_config(section)            # the GRPOConfig the trainer gets
    write_resolved(resolved(section, config), out_dir)
"""

from llmhalluc.params.errors import ParamsError
from llmhalluc.params.loader import load_section
from llmhalluc.params.resolve import RESOLVED_FILE, resolved, trl_config, write_resolved
from llmhalluc.params.schema import Section

__all__ = ["RESOLVED_FILE", "ParamsError", "Section", "load_section", "resolved", "trl_config", "write_resolved"]
