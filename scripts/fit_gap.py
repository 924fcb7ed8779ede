"""Where each trained model stands against a ridge on summaries of its own inputs: its mean CCC on
the train clips it was fitted on, on val and on test, beside a ridge (functionals_ridge's rules:
grouped CV on train subjects for alpha, CCC rescaling) on the functionals of the same modality.

    python scripts/fit_gap.py                      # train.models of params.yaml, after dvc repro
    python scripts/fit_gap.py --models perfex_cnn hrnet_face

A model far above its val CCC on train has learnt its training clips (memorised them); one that
stays low on train has not fitted even those (optimisation, inputs or capacity). Prints a markdown
table and writes bench/results/fit_gap.json. Reads data/ and data/models/<model>/best.pt; writes
no pipeline output (the ridges are fitted into a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from personality.schemas import TRAITS  # noqa: E402

# modality of each input key -> prefixes of data/functionals columns that summarise it
VISUAL = ("AU", "head_", "blink_")
VOCAL = ("fn_", "f0_semitone_", "egemaps_")
MODALITY = {"aus": ("AU",), "face": VISUAL, "face_seq": VISUAL, "frame": VISUAL,
            "logmel": VOCAL, "audio_fn": VOCAL, "wave": VOCAL, "functionals": ()}


def split_scores(net, ckpt: dict, manifest, root: Path) -> dict[str, float]:
    """{split: mean CCC} of a checkpoint's model over the labelled clips of each split."""
    from models.data import build_sources, for_inference
    from models.engine import evaluate

    out = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split].dropna(subset=list(TRAITS))
        sources = build_sources(ckpt["inputs"], root=root, video_ids=list(rows["video_id"]),
                                config=for_inference(ckpt.get("source_config")))
        ids = [v for v in rows["video_id"] if all(s.has(v) for s in sources)]
        y = rows.set_index("video_id").loc[ids, list(TRAITS)].to_numpy(np.float64)
        out[split] = evaluate(net, sources, ids, y)["ccc"]
    return out


def ridge_on(prefixes: tuple[str, ...], manifest, root: Path) -> dict[str, float]:
    """functionals_ridge fitted on the train split with only the columns starting with
    `prefixes` (() = all): {split: mean CCC}."""
    from models.classical import fit_closed_form
    from models.data import build_sources, for_inference
    from models.engine import load_checkpoint
    from models.registry import build_model

    labelled = manifest.dropna(subset=list(TRAITS))
    train = labelled[labelled["split"] == "train"]
    config = {"functionals": {"include": list(prefixes)}}
    sources = build_sources(["functionals"], root=root, video_ids=list(train["video_id"]),
                            config=config)
    with tempfile.TemporaryDirectory() as tmp:
        fit_closed_form(build_model("functionals_ridge"), sources,
                        train_ids=list(train["video_id"]),
                        train_targets=train[list(TRAITS)].to_numpy(np.float32),
                        groups=train["subject_id"].to_numpy(), out_dir=Path(tmp),
                        meta={"model_name": "functionals_ridge", "inputs": ["functionals"],
                              "source_config": for_inference(config, sources)})
        net, ckpt = load_checkpoint(Path(tmp) / "best.pt")
        return split_scores(net, ckpt, manifest, root)


def main(argv: list[str] | None = None) -> int:
    from models.engine import load_checkpoint
    from personality.common import experiment_models, find_checkpoint, read_artifact

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args(argv)
    manifest = read_artifact("manifest", path=ROOT / "data" / "manifest.parquet")
    rows, ridges = [], {}
    for model in args.models or experiment_models():
        net, ckpt = load_checkpoint(find_checkpoint(model, ROOT))
        inputs = list(ckpt["inputs"])
        prefixes = tuple(sorted({p for k in inputs for p in MODALITY.get(k, ())}))
        if "functionals" in inputs:
            prefixes = ()
        if prefixes not in ridges:
            ridges[prefixes] = ridge_on(prefixes, manifest, ROOT)
        rows.append({"model": model, "inputs": inputs, **split_scores(net, ckpt, manifest, ROOT),
                     "ridge_columns": list(prefixes) or ["all"],
                     **{f"ridge_{k}": v for k, v in ridges[prefixes].items()}})
        print(f"{model}: done", file=sys.stderr, flush=True)
    print("| model | inputs | train | val | test | ridge on its modality's functionals "
          "(train / val / test) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {', '.join(r['inputs'])} | {r['train']:.3f} | {r['val']:.3f} | "
              f"{r['test']:.3f} | {'+'.join(r['ridge_columns'])}: {r['ridge_train']:.3f} / "
              f"{r['ridge_val']:.3f} / {r['ridge_test']:.3f} |")
    out = ROOT / "bench" / "results" / "fit_gap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
