"""Build an embedded GIT backbone: tokenizer, processor, config, synthetic-caption pretraining, save.

The committed folders were made with (docs/tiny_git.md has the figures)::

    python -m jobs.build_tiny_git --out cxr_core/assets/tiny-git --steps 2400 --seed 0   # 3.5-4 min
    python -m jobs.build_tiny_git --size small --out cxr_core/assets/small-git --seed 0 --threads 1

A quick CPU smoke run::

    python -m jobs.build_tiny_git --out /tmp/tiny-git --steps 20

Writes the Hugging Face folder (config.json, model.safetensors, tokenizer and processor files) and
``pretraining.json`` with the figures; see docs/tiny_git.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from jobs._cli import main_guard

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally; never reach for the hub


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.build_tiny_git", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (e.g. cxr_core/assets/tiny-git)")
    parser.add_argument(
        "--size",
        choices=("tiny", "small"),
        default="tiny",
        help="tiny: 0.94M parameters, the `embedded` model (default); small: 5.06M, `embedded-small`",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps of 16 scenes (default: the size's, 2400)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the data (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--eval-size", type=int, default=256, help="held-out scenes captioned before and after (default 256)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the training loss every 100 steps")
    args = parser.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--threads", args.threads), ("--eval-size", args.eval_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a positive integer, got {value}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s"
    )

    from cxr_core.tiny_git import git_size, pretrain

    if args.steps is None:
        args.steps = git_size(args.size).steps

    raw = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "jobs.build_tiny_git", *raw])
    record = pretrain(
        args.out,
        steps=args.steps,
        seed=args.seed,
        size=args.size,
        eval_size=args.eval_size,
        threads=args.threads,
        command=command,
    )
    before, after = record["held_out"]["random_init"], record["held_out"]["pretrained"]
    print(
        f"wrote {args.out}: {args.size}, {record['parameters']:,} parameters, "
        f"{record['folder_bytes'] / 1e6:.1f} MB ({record['stored_dtype']} weights)"
    )
    print(f"pretraining: {record['steps']} steps x {record['batch_size']}, {record['wall_time_s']:.0f} s")
    print(
        f"held-out captions ({after['n_images']} images): "
        f"loss {before['loss']:.3f} -> {after['loss']:.3f}, "
        f"token accuracy {before['token_accuracy']:.3f} -> {after['token_accuracy']:.3f}, "
        f"exact match {before['exact_match']:.3f} -> {after['exact_match']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
