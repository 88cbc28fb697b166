"""Export the chosen checkpoint of a sweep as a self-contained Hugging Face folder with a model card.

The checkpoint is chosen as jobs.evaluate chooses, on validation only: the best configuration (overall, of one
method, or the one named), its best seed, that trial's best epoch. The folder loads with transformers and peft
alone (offline, from anywhere): the processor, the model (FFT; or LoRA merged with --merge) or the adapter with
a copy of its local base in base/ (a hub base is named by its id), README.md (the model card) and
cxr_export.json (what jobs.predict reads).

    python -m jobs.export ray_results/demo --out exports/demo-best                 # the best configuration
    python -m jobs.export ray_results/demo --method lora --out exports/demo-lora   # the best LoRA one (adapter)
    python -m jobs.export ray_results/demo --method lora --merge --out exports/demo-lora-merged
    python -m jobs.export ray_results/demo --config-id "fft lr=0.001" --out exports/fft
"""

from __future__ import annotations

import argparse

from jobs._cli import add_objective_args, main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's local results folder, e.g. ray_results/demo")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--method", help="export the best configuration of this method (fft, lora) or LoRA "
                       "variant (lora:text); default: the best configuration of any method")  # fmt: skip
    which.add_argument("--config-id", help="export this configuration (the config_id column of "
                       "RESULTS/report/configs.csv, e.g. 'fft lr=0.001')")  # fmt: skip
    p.add_argument("--merge", action="store_true",
                   help="merge a LoRA adapter into its base and write a plain GitForCausalLM")  # fmt: skip
    p.add_argument("--out", required=True, help="the export folder (new, or empty)")
    add_objective_args(p)
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from pathlib import Path

    from cxr_core.errors import CxrError
    from cxr_core.export import ADAPTER, BASE_DIR, FULL, choose_checkpoint, export_checkpoint

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before the sweep is read: fail fast
        raise CxrError(f"--out {out} exists and is not empty; pass a new folder (an export never overwrites)")
    choice = choose_checkpoint(args.results, method=args.method, config_id=args.config_id, metric=args.metric,
                               mode=args.mode)  # fmt: skip
    print(f"chose {choice.config_id} ({choice.how}): seed {choice.seed}, epoch {choice.epoch}, validation "
          f"{choice.metric} {choice.value:.4f}; checkpoint {choice.checkpoint}")  # fmt: skip
    info = export_checkpoint(choice, out, merge=args.merge)
    if args.merge and info["format"] == FULL:
        print(f"note: --merge: the {choice.method} checkpoint is a full model already; exported as it is")
    if info["format"] == ADAPTER:
        ref = info["base_model"]["reference"]
        base = f"{out}/{BASE_DIR}" if ref == BASE_DIR else ref
        how = f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}'), '{out}')"
    else:
        how = f"AutoModelForCausalLM.from_pretrained('{out}')"
    print(f"wrote {out} ({info['format']}): load with {how} and AutoProcessor.from_pretrained('{out}'); "
          f"model card {out}/README.md")  # fmt: skip


if __name__ == "__main__":
    main()
