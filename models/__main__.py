"""List the registered models: name, modality, inputs and the work each re-implements.

    python -m models                    # every model, one line each
    python -m models --modality audio   # one modality (au, visual, audio, audio-visual)
    python -m models --cards            # with each model's card

`train.models` in params.yaml takes these names; docs/models.md has their measured rows.
"""
from __future__ import annotations

import argparse
import sys

from models.registry import MODALITIES, list_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", choices=MODALITIES)
    parser.add_argument("--cards", action="store_true", help="print each model's card too")
    args = parser.parse_args(argv)
    rows = list_models(modality=args.modality)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['modality']:<12}  {'+'.join(r['inputs']):<18}  "
              f"{r['source']}")
        if args.cards:
            print(f"{'':<{width}}  {r['card']}")
    print(f"{len(rows)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
