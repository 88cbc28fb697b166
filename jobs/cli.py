"""``cxr-tune``: every job behind one command, for an installed project (``pip install -e .`` puts it on PATH).

    cxr-tune demo
    cxr-tune sweep search_spaces/demo.yaml --name demo
    cxr-tune analyze ray_results/demo
    cxr-tune JOB --help

``cxr-tune JOB ARGS`` is ``python -m jobs.JOB ARGS``: same options, same output, same exit codes.
"""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "demo": "the whole study on the embedded default, ending with its answer",
    "make-synthetic": "write a synthetic MIMIC-CXR-JPG-layout dataset",
    "prepare-data": "MIMIC root -> train/val/test split CSVs",
    "sweep": "run a search space with Ray Tune (also --dry-run, --resume)",
    "evaluate": "score the configurations chosen on validation on the test split, once",
    "analyze": "the comparison report of a sweep",
    "build-tiny-git": "rebuild the embedded tiny GIT",
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: cxr-tune JOB [ARGS...]   (cxr-tune JOB --help for a job's options)", "", "jobs:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, what in JOBS.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    job = argv[0].replace("_", "-")
    if job not in JOBS:
        print(f"error: unknown job {argv[0]!r}; choose from {', '.join(JOBS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"jobs.{job.replace('-', '_')}")
    sys.argv = [f"cxr-tune {job}", *argv[1:]]
    module.main(argv[1:])


if __name__ == "__main__":
    main()
