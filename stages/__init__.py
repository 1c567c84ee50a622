"""The pipeline's stage scripts, one per params.yaml section.

dvc.yaml runs each as `python -m stages.<name>` from the repository root, which puts that root first on
sys.path: a queued experiment (`dvc exp run --queue` works in a copy under .dvc/tmp/exps) runs the
copy's llmhalluc, not the checkout the editable install points at. `python stages/<name>.py` works too,
with the installed llmhalluc; a relaunch under accelerate starts the same way the stage was started.
"""
