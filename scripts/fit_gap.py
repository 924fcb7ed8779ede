"""Where each trained model stands against a ridge on summaries of its own inputs: its mean CCC on
the train clips it was fitted on, on val and on test, beside a ridge (functionals_ridge's rules:
grouped CV on train subjects for alpha, CCC rescaling) on the functionals of the same modality.

    python scripts/fit_gap.py                      # train.models of params.yaml, after dvc repro
    python scripts/fit_gap.py --models perfex_cnn hrnet_face

A model far above its val CCC on train has learnt its training clips (memorised them); one that
stays low on train has not fitted even those (optimisation, inputs or capacity). Prints a markdown
table and writes bench/results/fit_gap.json. Reads data/ and data/models/<model>/best.pt; writes
no pipeline output (the ridges are fitted into a temporary folder).

Every CCC carries its 95% interval over subject resamples (models/bootstrap.py, evaluate's
`bootstrap` count and base.seed from params.yaml), and each split's gap (model - ridge) is paired:
both scored on the same clips and resamples, with the share of resamples the model wins.
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


def split_predictions(net, ckpt: dict, manifest, root: Path) -> dict[str, dict]:
    """{split: {"ids", "y" (n, 5), "pred" (n, 5), "subjects" (n,)}} of a checkpoint's model over
    the labelled clips of each split it has inputs for."""
    from models.data import build_sources, for_inference
    from models.engine import predict_videos

    out = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split].dropna(subset=list(TRAITS))
        sources = build_sources(ckpt["inputs"], root=root, video_ids=list(rows["video_id"]),
                                config=for_inference(ckpt.get("source_config")))
        ids = [v for v in rows["video_id"] if all(s.has(v) for s in sources)]
        by_id = rows.set_index("video_id").loc[ids]
        out[split] = {"ids": ids, "y": by_id[list(TRAITS)].to_numpy(np.float64),
                      "pred": np.asarray(predict_videos(net, sources, ids), dtype=np.float64),
                      "subjects": by_id["subject_id"].astype(str).to_numpy()}
    return out


def ridge_on(prefixes: tuple[str, ...], manifest, root: Path) -> dict[str, dict]:
    """functionals_ridge fitted on the train split with only the columns starting with
    `prefixes` (() = all): split_predictions of the fitted ridge."""
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
                        train_targets=train[list(TRAITS)].to_numpy(np.float64),
                        groups=train["subject_id"].to_numpy(), out_dir=Path(tmp),
                        meta={"model_name": "functionals_ridge", "inputs": ["functionals"],
                              "source_config": for_inference(config, sources)})
        net, ckpt = load_checkpoint(Path(tmp) / "best.pt")
        return split_predictions(net, ckpt, manifest, root)


def compare(model: dict, ridge: dict, *, n_boot: int, seed: int, level: float,
            method: str | None = None) -> dict:
    """One split, model against ridge on the clips both score, over the same subject resamples:
    {"model": ccc, "model_ci", "ridge", "ridge_ci", "gap_ci" (model - ridge), "p_model_better",
     "clips", "subjects"}; ccc is the mean over traits of the per-trait CCC."""
    from models.bootstrap import (DEFAULT_METHOD, bootstrap_scores, model_uncertainty, paired,
                                  subject_jackknife, subject_resamples, subjects_for)

    method = method or DEFAULT_METHOD  # evaluate.interval's default

    where = {v: i for i, v in enumerate(ridge["ids"])}
    keep = [i for i, v in enumerate(model["ids"]) if v in where]
    other = [where[model["ids"][i]] for i in keep]
    y, subjects = model["y"][keep], model["subjects"][keep]
    preds = {"model": model["pred"][keep], "ridge": ridge["pred"][other]}
    rows = subject_resamples(subjects, n_boot=n_boot, seed=seed)
    boot = bootstrap_scores(y, preds, rows, jackknife=subject_jackknife(subjects),
                            subjects=subjects_for(method, subjects))
    vs = paired(boot["model"], boot["ridge"], level=level, method=method)
    out = {"clips": len(keep), "subjects": int(len(set(subjects))),
           "gap_ci": vs["delta_ccc"], "p_model_better": vs["p_better"]}
    for name in preds:
        out[name] = float(np.mean(boot[name]["point"]["ccc"]))  # a trait without a CCC: no mean
        out[f"{name}_ci"] = model_uncertainty(boot[name], TRAITS, level=level,
                                              method=method)["mean"]["ccc"]
    return out


def _cell(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_table(rows: list[dict]) -> None:
    """The markdown table: each split's model CCC, ridge CCC and paired gap, with intervals."""
    print("| model | inputs | ridge columns | split | model CCC [95% CI] | ridge CCC [95% CI] | "
          "gap [95% CI] | P(model better) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        for split in ("train", "val", "test"):
            c = r["splits"][split]
            print(f"| {r['model']} | {', '.join(r['inputs'])} | {'+'.join(r['ridge_columns'])} | "
                  f"{split} | {_cell(c['model'], c['model_ci'])} | "
                  f"{_cell(c['ridge'], c['ridge_ci'])} | [{c['gap_ci'][0]:+.3f}, "
                  f"{c['gap_ci'][1]:+.3f}] | {c['p_model_better']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    from models.engine import load_checkpoint
    from personality.common import (experiment_models, find_checkpoint, load_params_file,
                                     read_artifact)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args(argv)
    params = load_params_file(ROOT / "params.yaml")
    boot = {"n_boot": int(params["evaluate"]["bootstrap"]), "seed": int(params["base"]["seed"]),
            "level": float(params["evaluate"]["ci_level"]),
            "method": params["evaluate"].get("interval")}
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
        own = split_predictions(net, ckpt, manifest, ROOT)
        rows.append({"model": model, "inputs": inputs, "ridge_columns": list(prefixes) or ["all"],
                     "splits": {split: compare(own[split], ridges[prefixes][split], **boot)
                                for split in own}})
        print(f"{model}: done", file=sys.stderr, flush=True)
    print_table(rows)
    out = ROOT / "bench" / "results" / "fit_gap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bootstrap": boot, "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
