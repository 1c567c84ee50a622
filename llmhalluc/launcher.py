"""How a training stage starts: in this process, or on N processes through `accelerate launch`.

The stage's `cmd` in dvc.yaml stays `python -m stages.train_sft`; with
`launcher.kind: accelerate` the stage starts itself again, the same way (as a
module, or as the script `python stages/train_sft.py`), under
`accelerate launch --config_file <launcher.config_file> --num_processes N`, and
the relaunched processes (marked by an environment variable) do the work. So
moving from one process to eight GPUs is a params change that DVC tracks, not
a different command.

Two runs side by side (`dvc queue start -j 2`) must not fight over the
rendezvous port, so unless the params pin one, each launch takes a free port.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmhalluc.params.provided import provide

#: Set in the relaunched processes, so they do the work instead of launching again.
LAUNCHED_ENV = "LLMHALLUC_LAUNCHED"


def rank() -> int:
    """This process's global rank (0 when not distributed); torchrun and accelerate set RANK."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes outs, metrics and model cards: N ranks writing one folder would corrupt it."""
    return rank() == 0


def print_once(message: str) -> None:
    """Print on rank 0 only: a decision all ranks make alike is worth one line, not N."""
    if is_main_process():
        say(message)


def needs_launch(launcher: Any) -> bool:
    """True in the process DVC started when the params ask for accelerate; False once relaunched."""
    return launcher.kind == "accelerate" and os.environ.get(LAUNCHED_ENV) != "1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it), for torch.distributed's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """accelerate's YAML config as plain data (safe loading: a config can never run code)."""
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load(Path(path).read_text())
    return data if isinstance(data, dict) else {}


provide("accelerate_config", read_accelerate_config)  # the params checks read its distributed_type


def accelerate_command(launcher: Any, script: str, argv: list[str], *, module: bool = False) -> list[str]:
    """The `accelerate launch` command line that runs script (a module name, with module) on
    launcher.num_processes processes."""
    config = read_accelerate_config(launcher.config_file)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launcher.config_file),
           "--num_processes", str(launcher.num_processes)]
    # Several machines agree on the port written in their shared config; one machine takes a free one.
    if launcher.main_process_port is not None:
        cmd += ["--main_process_port", str(launcher.main_process_port)]
    elif int(config.get("num_machines", 1)) == 1:
        cmd += ["--main_process_port", str(free_port())]
    return [*cmd, *(["--module"] if module else []), script, *argv]


def launch(stage: str, launcher: Any, script: str, argv: list[str], *, module: bool = False) -> int:
    """Run this stage under accelerate and return its exit code (the first failing rank's)."""
    cmd = accelerate_command(launcher, script, argv, module=module)
    print(f"{stage}: launching {launcher.num_processes} processes: {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd, env={**os.environ, LAUNCHED_ENV: "1"})


def say(message: str) -> None:
    """Print one whole line in one write: ranks share a stream, and a line written in two
    pieces (text, then newline; what `print` does when Python runs unbuffered) can be cut in
    half by another rank's line."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()
