"""The bottom layer: foundations that the stages and the models share.

Imports point one way: personality <- models <- stages (tests/test_layering.py checks it).
This package imports neither `stages` nor `models`.

    common.py      typed params (load_params), artifacts (read/write, atomic writes), paths,
                   logging, progress, MLflow tracking
    schemas.py     the columns of every artifact, checked at each stage boundary
    video_io.py    video decoding and frame sampling
    video_shards.py per-video Parquet shards (one row group per video)
    facemodel.py   the MediaPipe face-landmarker bundle (`python -m personality.facemodel --install`)
    warmup.py      compiles librosa's numba kernels once (`python -m personality.warmup`)
    synthetic.py   the offline synthetic dataset generator (ingest.source: synthetic)
    datasets.py    adapters for the real datasets (folder, chalearn16, udiva, perfex, openface_csv)
    plots.py       the PNG figures of evaluate
"""
