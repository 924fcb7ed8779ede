"""PerFeX AU models and the model registry: shapes, gradients, masking, batch independence,
determinism and a tiny learnable task. CPU only, single thread, a few seconds.

    .venv/bin/python -m pytest tests/test_perfex_models.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import build_model, list_models
from models import registry
from models.metrics import bin_values, to_bins
from models.perfex import (AttentionLSTM, MaskedBatchNorm1d, PerfexCNNConfig, collate_aus,
                           masked_max, masked_mean, perfex_cnn, prepare_inputs)

# the PerFeX family (masked sequence models with both heads); the other AU model of the zoo,
# spectrum_model, resamples the clip to a fixed length and is tested in tests/test_zoo.py
AU_MODELS = [m["name"] for m in list_models(modality="au") if m["source"].startswith("PerFeX")]
HEADS = ("classification", "regression")
N_AUS = 17


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _batch(lengths, *, T=None, seed=0):
    """aus (B, T, 17) uniform on 0-5 with zeros after each length, and the prefix mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    aus = torch.rand(len(lengths), T, N_AUS, generator=g) * 5  # (B, T, 17)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return aus.masked_fill(~mask[:, :, None], 0.0), mask


def _build(name, head="classification", seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(name, head=head, **cfg)


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_lists_perfex_models():
    models = {m["name"]: m for m in list_models()}
    for name in ("perfex_cnn", "perfex_hybrid"):
        m = models[name]
        assert set(m) == {"name", "modality", "inputs", "source", "card"}
        assert m["modality"] == "au"
        assert m["inputs"] == ["aus", "aus_mask"]
        assert m["card"] and "\n" not in m["card"]
    assert set(AU_MODELS) >= {"perfex_cnn", "perfex_hybrid"}
    assert all(m["modality"] == "au" for m in list_models(modality="au"))


def test_build_model_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*perfex_cnn"):
        build_model("nope")
    with pytest.raises(ValueError, match=r"unknown config key 'kernels'.*kernel_sizes"):
        build_model("perfex_cnn", kernels=(3,))
    with pytest.raises(ValueError, match="head must be"):
        build_model("perfex_hybrid", head="ordinal")
    with pytest.raises(ValueError, match="modality"):
        list_models(modality="smell")


def test_register_validates_and_refuses_clashes():
    with pytest.raises(ValueError, match="modality"):
        registry.register("x_model", modality="smell", inputs="aus", source="s", card="c")
    with pytest.raises(ValueError, match="inputs"):
        registry.register("x_model", modality="au", inputs=(), source="s", card="c")

    @registry.register("_test_tiny", modality="audio", inputs="logmel", source="test",
                       card="a linear layer\nsecond line is not part of the card")
    def tiny(**config):
        return nn.Linear(2, 5)

    try:
        assert isinstance(build_model("_test_tiny"), nn.Linear)
        spec = next(m for m in list_models(modality="audio") if m["name"] == "_test_tiny")
        assert spec["inputs"] == ["logmel"] and spec["card"] == "a linear layer"
        with pytest.raises(ValueError, match="already registered"):
            @registry.register("_test_tiny", modality="audio", inputs="wave", source="t", card="c")
            def other(**config):
                return nn.Linear(2, 5)
    finally:
        registry._REGISTRY.pop("_test_tiny", None)


def test_config_object_and_params_style_lists():
    m = perfex_cnn(config=PerfexCNNConfig(kernel_sizes=(3, 5)), head="regression")
    assert len(m.branches) == 2 and m.config.head == "regression"
    m = build_model("perfex_cnn", kernel_sizes=[3, 5, 7], channels=[8, 16])  # YAML gives lists
    assert m.config.kernel_sizes == (3, 5, 7) and m.config.channels == (8, 16)


# ---------------------------------------------------------------------------------------------
# forward / backward for every registered AU model and both heads


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", AU_MODELS)
def test_forward_backward(name, head):
    model = _build(name, head)
    aus, mask = _batch([30, 17, 4])
    targets = torch.rand(3, 5)
    out = model({"aus": aus, "aus_mask": mask})
    assert out.shape == ((3, 5, 5) if head == "classification" else (3, 5))
    loss = model.loss(out, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    scores = model.decode(out)
    assert scores.shape == (3, 5)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    with torch.inference_mode():
        model.eval()
        pred = model.predict({"aus": aus, "aus_mask": mask})
    assert pred.shape == (3, 5) and bool(((pred >= 0) & (pred <= 1)).all())
    proba = model.proba(out)
    if head == "classification":
        assert proba.shape == (3, 5, 5)
        torch.testing.assert_close(proba.sum(-1), torch.ones(3, 5))
    else:
        assert proba is None


# ---------------------------------------------------------------------------------------------
# masking and batch independence


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("name", AU_MODELS)
def test_padding_values_and_length_do_not_matter(name, train_mode):
    # train mode too (dropout off): masked batch norm must not take padding into its statistics
    model = _build(name, "regression", dropout=0.0, **(
        {"lstm_dropout": 0.0} if name == "perfex_hybrid" else {"batch_norm": True}))
    model.train(train_mode)
    aus, mask = _batch([20, 9, 1])
    garbage = aus.clone()
    garbage[~mask] = 1e3
    garbage[1, 15] = float("nan")  # a no-face frame left in padding must not poison the row
    with torch.no_grad():
        ref = model({"aus": aus, "aus_mask": mask})
        got = model({"aus": garbage, "aus_mask": mask})
        longer = model({"aus": F.pad(aus, (0, 0, 0, 15), value=7.0),  # (B, T + 15, 17)
                        "aus_mask": F.pad(mask, (0, 15), value=False)})
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(longer, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", AU_MODELS)
def test_output_is_independent_of_padding_length_and_batch_mates(name):
    # a clip alone, unpadded, scores the same as inside a padded batch of others (eval mode);
    # the published code could only run batch size 1 because this did not hold
    model = _build(name).eval()
    aus, mask = _batch([25, 12, 7, 25])
    with torch.no_grad():
        batched = model.predict({"aus": aus, "aus_mask": mask})
        for i, n in enumerate([25, 12, 7, 25]):
            alone = model.predict({"aus": aus[i:i + 1, :n]})  # no mask: every step real
            torch.testing.assert_close(alone, batched[i:i + 1], atol=1e-5, rtol=1e-5)
        longer = torch.cat([aus, torch.zeros(4, 10, N_AUS)], dim=1)  # (B, T + 10, 17)
        longer_mask = torch.cat([mask, torch.zeros(4, 10, dtype=torch.bool)], dim=1)
        torch.testing.assert_close(model.predict({"aus": longer, "aus_mask": longer_mask}),
                                   batched, atol=1e-5, rtol=1e-5)


def _permutation_error(model, aus, mask):
    """max |model(x[perm]) - model(x)[perm]|: zero for a model that treats clips independently."""
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = model.predict({"aus": aus, "aus_mask": mask})
        out_perm = model.predict({"aus": aus[perm], "aus_mask": mask[perm]})
    return float((out_perm - out[perm]).abs().max())


@pytest.mark.parametrize("name", AU_MODELS)
def test_batch_permutation_is_consistent(name):
    model = _build(name).eval()
    aus, mask = _batch([20, 20, 14, 6])
    assert _permutation_error(model, aus, mask) < 1e-5


class _PublishedBugLSTM(AttentionLSTM):
    """The published branch: an LSTM without batch_first fed (B, T, F), so it recurs over the batch
    and treats time steps as independent sequences; no packing."""

    def forward(self, x, mask, lengths):
        h, _ = self.lstm(x)  # read as (seq=B, batch=T, F): the recurrence runs across clips
        e = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        return torch.bmm(e.softmax(dim=1).unsqueeze(1), h).squeeze(1)


def test_batch_tests_catch_the_published_lstm_bug():
    model = _build("perfex_hybrid").eval()
    aus, mask = _batch([20, 20, 14, 6])
    buggy = _PublishedBugLSTM(N_AUS, hidden=128, layers=1, attention_dim=64)
    buggy.load_state_dict(model.lstm_branch.state_dict())
    buggy.lstm.batch_first = False
    model.lstm_branch = buggy
    assert _permutation_error(model, aus, mask) > 1e-4


def test_attention_lstm_reads_each_clips_own_sequence():
    model = _build("perfex_hybrid").eval()
    branch = model.lstm_branch
    aus, mask = _batch([16, 16, 10])
    x, m, lengths = prepare_inputs(aus, mask, n_aus=N_AUS, seq_len=700)
    with torch.no_grad():
        ref = branch(x, m, lengths)  # (B, H)
        alpha = branch.last_attention  # (B, T)
        torch.testing.assert_close(alpha.sum(1), torch.ones(3))
        assert float(alpha[2, 10:].abs().max()) == 0.0  # padding gets no attention
        # change clip 1 only: its context moves, the others' do not
        x2 = x.clone()
        x2[1] = x2[1].flip(0)  # same values, reversed in time: an order-blind branch would not see it
        got = branch(x2, m, lengths)
    assert float((got[1] - ref[1]).abs().max()) > 1e-4
    torch.testing.assert_close(got[[0, 2]], ref[[0, 2]])


def test_prepare_inputs_checks_and_empty_rows():
    aus, mask = _batch([5, 3])
    with pytest.raises(ValueError, match=r"\(B, T, 17\)"):
        prepare_inputs(aus[..., :16], mask, n_aus=N_AUS, seq_len=700)
    holes = mask.clone()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="prefix"):
        prepare_inputs(aus, holes, n_aus=N_AUS, seq_len=700)
    x, m, lengths = prepare_inputs(aus, mask, n_aus=N_AUS, seq_len=4)  # cropped to seq_len
    assert x.shape == (2, 4, N_AUS) and lengths.tolist() == [4, 3]
    # a clip with no real step (no face at all) scores as one zero step, not NaN
    empty = torch.zeros(2, 5, dtype=torch.bool)
    empty[0, :5] = True
    for name in AU_MODELS:
        model = _build(name).eval()
        with torch.no_grad():
            assert torch.isfinite(model.predict({"aus": aus, "aus_mask": empty})).all()


def test_masked_reductions():
    x = torch.tensor([[[1.0, 3.0, 100.0], [-2.0, -4.0, 100.0]]])  # (1, 2, 3): last step is padding
    m = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(x, m), torch.tensor([[2.0, -3.0]]))  # (1+3)/2, (-2-4)/2
    torch.testing.assert_close(masked_max(x, m), torch.tensor([[3.0, -2.0]]))


def test_masked_batchnorm_matches_batchnorm_on_full_mask():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 9)
    ours, ref = MaskedBatchNorm1d(6), nn.BatchNorm1d(6)
    torch.testing.assert_close(ours(x, torch.ones(4, 9, dtype=torch.bool)), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    # with a mask: statistics of the real steps only (here: the first 5 steps of every row)
    m = torch.arange(9)[None, :].expand(4, 9) < 5
    y = MaskedBatchNorm1d(6, affine=False)(x, m)
    torch.testing.assert_close(y[:, :, :5], F.batch_norm(x[:, :, :5], None, None, training=True))


def test_collate_aus():
    seqs = [np.ones((4, N_AUS)), np.full((9, N_AUS), 2.0), np.full((2, N_AUS), np.nan)]
    aus, mask = collate_aus(seqs, seq_len=6)
    assert aus.shape == (3, 6, N_AUS) and aus.dtype == torch.float32
    assert mask.sum(1).tolist() == [4, 6, 2]  # the 9-step clip is cropped to seq_len
    assert float(aus[0, 4:].abs().sum()) == 0.0 and float(aus[1].min()) == 2.0
    assert torch.isfinite(aus).all()  # NaN (no face) -> 0
    with pytest.raises(ValueError, match=r"sequence 1.*\(T, 17\)"):
        collate_aus([np.ones((3, N_AUS)), np.ones((3, 5))])


# ---------------------------------------------------------------------------------------------
# heads


def test_classification_loss_is_summed_cross_entropy_on_floor_4p():
    model = _build("perfex_cnn")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 5, generator=g)
    targets = torch.tensor([[0.0, 0.24, 0.25, 0.5, 1.0]] * 2 + [[0.74, 0.75, 0.99, 0.1, 0.6]] * 2)
    bins = torch.from_numpy(to_bins(targets.numpy()))  # the metrics module's binning
    expected = sum(F.cross_entropy(logits[:, j], bins[:, j]) for j in range(5))
    torch.testing.assert_close(model.loss(logits, targets), expected)
    # NaN = unlabelled: that trait averages over its labelled rows only
    t2 = targets.clone()
    t2[0, 3] = float("nan")
    expected2 = sum(F.cross_entropy(logits[:, j], bins[:, j]) for j in range(5) if j != 3) + \
        F.cross_entropy(logits[1:, 3], bins[1:, 3])
    torch.testing.assert_close(model.loss(logits, t2), expected2)


def test_classification_decoding():
    values = torch.tensor(bin_values(), dtype=torch.float32)
    logits = torch.full((1, 5, 5), -50.0)
    logits[0, torch.arange(5), torch.tensor([0, 1, 2, 3, 4])] = 50.0  # trait j: certain of bin j
    for decode in ("expectation", "argmax"):
        model = _build("perfex_cnn", decode=decode)
        scores = model.decode(logits)
        torch.testing.assert_close(scores, values[None, :])
        # decoded scores fall back in the bin they came from (metrics' 5-bin view agrees)
        assert to_bins(scores.numpy()).tolist() == [[0, 1, 2, 3, 4]]
    # uniform logits: expectation is the mean bin value
    model = _build("perfex_cnn")
    torch.testing.assert_close(model.decode(torch.zeros(2, 5, 5)),
                               torch.full((2, 5), float(values.mean())))


def test_regression_loss_is_masked_mse():
    model = _build("perfex_hybrid", "regression")
    scores = torch.tensor([[0.5] * 5, [0.2] * 5])
    targets = torch.tensor([[0.7] * 5, [0.2, 0.2, 0.2, 0.2, float("nan")]])
    # 5 errors of 0.2 and 4 of 0: MSE = 5 * 0.04 / 9
    torch.testing.assert_close(model.loss(scores, targets), torch.tensor(5 * 0.04 / 9))


# ---------------------------------------------------------------------------------------------
# determinism and learning


@pytest.mark.parametrize("name", AU_MODELS)
def test_determinism_with_manual_seed(name):
    aus, mask = _batch([12, 8])
    outs = []
    for seed in (3, 3, 4):
        model = _build(name, seed=seed)  # train mode: dropout draws come from the same seed
        torch.manual_seed(seed)
        outs.append(model({"aus": aus, "aus_mask": mask}))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])


def _learnable_task(n=16, T=24, seed=5):
    """Targets that the AUs determine: trait j = mean intensity of AU j over real steps / 5."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (n, T)
    level = torch.rand(n, 1, N_AUS, generator=g) * 5  # (n, 1, 17): a per-clip level per AU
    aus = (level + torch.randn(n, T, N_AUS, generator=g) * 0.3).clamp(0, 5)  # (n, T, 17)
    aus = aus.masked_fill(~mask[:, :, None], 0.0)
    targets = masked_mean(aus.transpose(1, 2), mask)[:, :5] / 5  # (n, 17) -> (n, 5) in [0, 1]
    return {"aus": aus, "aus_mask": mask}, targets


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", AU_MODELS)
def test_loss_decreases_on_a_learnable_task(name, head):
    batch, targets = _learnable_task()
    model = _build(name, head, seed=0, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(model(batch), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def test_regression_z_head_is_unbounded():
    """z-scored labels (UDIVA): no sigmoid, so predictions can leave [0, 1]."""
    torch.manual_seed(0)
    model = build_model("perfex_cnn", head="regression_z")
    aus = torch.randn(4, 20, 17) * 3
    with torch.no_grad():
        model.head.mlp[-1].bias.fill_(-3.0)  # push outputs well below 0
        out = model({"aus": aus, "aus_mask": torch.ones(4, 20, dtype=torch.bool)})
    assert out.shape == (4, 5) and (out < 0).any()
    with pytest.raises(ValueError, match="regression_z"):
        build_model("perfex_cnn", head="softmax")
