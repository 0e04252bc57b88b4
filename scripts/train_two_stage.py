#!/usr/bin/env python
"""facet-train in two stages: the loss weights change at a given epoch (as MACE's "stage two").

    python scripts/train_two_stage.py --stage-two-epoch 21 --stage-two-energy-weight 1000 -- \\
        --train data/emt.xyz --preset examples/models/facet-emt-small.json --epochs 28 \\
        --energy-weight 10 --forces-weight 100 ... --out runs/emt-small

Stage one is ``facet-train`` with the given arguments, stopped after ``--stage-two-epoch``
epochs (the learning-rate schedule is that of the full ``--epochs``); its state is saved there.
Stage two resumes that state (``--resume``, so the optimiser, schedule, EMA and frame order go
on exactly) with the loss weights replaced by the ``--stage-two-*`` values, to ``--epochs``.
The reported training wall time (``metrics.json``, the checkpoint's provenance) is the sum of
both stages. facet-train has no option for this, so the stop is done here from outside
(``Trainer.fit``'s ``until``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facet.train import cli, trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: train_two_stage.py [stage-two options] -- <facet-train args>")
    k = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage-two-epoch", type=int, required=True,
                   help="epochs of stage one (the switch happens after this epoch)")
    p.add_argument("--stage-two-energy-weight", type=float)
    p.add_argument("--stage-two-forces-weight", type=float)
    p.add_argument("--stage-two-stress-weight", type=float)
    own = p.parse_args(argv[:k])
    train_args = argv[k + 1 :]
    args = cli.build_parser().parse_args(train_args)
    if not 0 < own.stage_two_epoch < args.epochs:
        raise SystemExit("--stage-two-epoch must lie between 0 and --epochs")

    # stage one: stop after stage_two_epoch epochs and save the resumable state there
    original_fit = trainer.Trainer.fit

    def fit_until(self, until=None):
        history = original_fit(self, until=own.stage_two_epoch)
        self.save_checkpoint("last.pt")
        return history

    trainer.Trainer.fit = fit_until
    try:
        cli.run(args)
    finally:
        trainer.Trainer.fit = original_fit
    print(f"stage one done after {own.stage_two_epoch} epochs", flush=True)

    # stage two: resume with the new loss weights
    args2 = cli.build_parser().parse_args(train_args)
    args2.resume = str(Path(args.out) / "last.pt")
    for name in ("energy", "forces", "stress"):
        value = getattr(own, f"stage_two_{name}_weight")
        if value is not None:
            setattr(args2, f"{name}_weight", value)
    print(f"stage two: energy {args2.energy_weight}, forces {args2.forces_weight}, stress "
          f"{args2.stress_weight}", flush=True)
    cli.run(args2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
