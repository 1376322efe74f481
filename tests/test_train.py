import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from helpers.cache import cached_run, checkpoint_path
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import (
    EarlyStopping,
    EpochCheckpoint,
    History,
    KeepBest,
    class_balanced,
    fit,
    predict,
    supervised_step,
)


def _toy(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    return TensorData(x, y, bias=torch.zeros(n, dtype=torch.long))


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def _train(seed, epochs=3):
    data = _toy()
    seed_everything(seed)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = fit(
        data,
        supervised_step(model, opt),
        epochs=epochs,
        batch_size=32,
        modules=model,
        seed=seed,
        progress=False,
        evaluate=lambda: {
            "acc_eval": float((predict(model, data).argmax(1) == data.y).float().mean())
        },
    )
    return model, h


def test_loss_decreases():
    _, h = _train(0, epochs=4)
    losses = h.column("loss")
    assert losses[-1] < 0.6 * losses[0]
    assert h.column("acc_eval")[-1] > 0.9


def test_same_seed_same_metrics_and_weights():
    m1, h1 = _train(7)
    m2, h2 = _train(7)
    m3, h3 = _train(8)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h.rows]
    assert strip(h1) == strip(h2)
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert strip(h1) != strip(h3)


def test_custom_step_drives_two_networks_and_min_batch():
    data = _toy(n=70)
    f, g = _model(), _model()
    opt_f, opt_g = torch.optim.SGD(f.parameters(), lr=0.1), torch.optim.SGD(g.parameters(), lr=0.1)
    sizes = []

    def step(batch):
        sizes.append(len(batch))
        for net, opt in ((g, opt_g), (f, opt_f)):
            loss = F.cross_entropy(net(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {"loss_f": loss}

    g_before = [p.clone() for p in g.parameters()]
    fit(data, step, epochs=2, batch_size=32, modules=[f, g], seed=0, min_batch=8, progress=False)
    assert sizes == [32, 32, 32, 32]  # the final batch of 6 < min_batch is dropped
    assert any(not torch.equal(a, b) for a, b in zip(g_before, g.parameters()))
    assert not f.training and not g.training


def test_early_stopping_and_keep_best():
    data = _toy()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing improves
    keep = KeepBest(model, "acc", mode="max")
    h = fit(
        data,
        supervised_step(model, opt),
        epochs=10,
        batch_size=64,
        modules=model,
        seed=0,
        progress=False,
        callbacks=[keep, EarlyStopping("acc", patience=2)],
    )
    assert len(h.rows) == 3 and h.stopped_early
    assert keep.restore() == 1


def test_class_balanced_sampler_balances():
    labels = torch.tensor([0] * 90 + [1] * 10)
    idx = class_balanced(labels)(20000, torch.Generator().manual_seed(0))
    share = float((labels[idx] == 1).float().mean())
    assert 0.47 < share < 0.53


def test_checkpoint_cache_round_trip_and_corruption(tmp_path, monkeypatch):
    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    data = _toy()
    calls = []

    def make():
        seed_everything(0)
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)

        def train():
            calls.append(1)
            h = fit(
                data,
                supervised_step(m, opt),
                epochs=1,
                batch_size=64,
                modules=m,
                seed=0,
                progress=False,
            )
            return {"history": h.to_state()}

        return m, train

    config = {"test": 1}
    m1, t1 = make()
    out1 = cached_run("toy", config, {"m": m1}, t1, root=tmp_path)
    m2, t2 = make()
    out2 = cached_run("toy", config, {"m": m2}, t2, root=tmp_path)
    assert len(calls) == 1 and out2["from_cache"] and not out1["from_cache"]
    assert out2["history"]["rows"][0]["loss"] == out1["history"]["rows"][0]["loss"]
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    # A damaged file fails its checksum and the run trains again.
    path = checkpoint_path("toy", config, tmp_path)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    m3, t3 = make()
    assert not cached_run("toy", config, {"m": m3}, t3, root=tmp_path)["from_cache"]
    assert len(calls) == 2
    # A different configuration is a different file.
    assert checkpoint_path("toy", {"test": 2}, tmp_path) != path


def test_retrain_switch_ignores_the_cache(tmp_path, monkeypatch):
    calls = []
    model = _model()
    cached_run("toy", {"x": 1}, {"m": model}, lambda: calls.append(1) or {}, root=tmp_path)
    monkeypatch.setenv("SHORTCUT_BOOK_RETRAIN", "1")
    assert not cached_run(
        "toy", {"x": 1}, {"m": model}, lambda: calls.append(1) or {}, root=tmp_path
    )["from_cache"]
    assert len(calls) == 2


class _CutOff(Exception):
    pass


def _resumable_run(path, epochs, cut_after=None):
    """Adam + a step LR schedule + KeepBest + EarlyStopping + dropout (global random stream), so
    every kind of state an epoch leaves behind must be restored for the runs to agree."""
    data = _toy()
    seed_everything(3)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    keep = KeepBest(model, "acc_eval")
    stop = EarlyStopping("acc_eval", patience=100)

    class Cut:
        def on_epoch_end(self, epoch, row, history):
            if cut_after is not None and epoch == cut_after + 1:
                raise _CutOff  # killed during epoch cut_after + 1: its state is never saved

    resume = EpochCheckpoint(
        path, {"model": model, "opt": opt, "sched": sched, "keep": keep, "stop": stop}
    )
    h = fit(
        data,
        supervised_step(model, opt),
        epochs=epochs,
        batch_size=32,
        modules=model,
        seed=3,
        progress=False,
        schedulers=[sched],
        callbacks=[keep, stop, Cut()],
        evaluate=lambda: {
            "acc_eval": float((predict(model, data).argmax(1) == data.y).float().mean())
        },
        resume=resume,
    )
    return model, h, keep.restore()


def test_a_cut_off_fit_resumes_to_the_uninterrupted_result(tmp_path):
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h.rows]
    whole, h_whole, best_whole = _resumable_run(tmp_path / "a.pt", epochs=6)
    with contextlib.suppress(_CutOff):
        _resumable_run(tmp_path / "b.pt", epochs=6, cut_after=3)
    assert (tmp_path / "b.pt").is_file()
    resumed, h_resumed, best_resumed = _resumable_run(tmp_path / "b.pt", epochs=6)
    assert strip(h_resumed) == strip(h_whole)
    assert best_resumed == best_whole
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.state_dict().values(), resumed.state_dict().values())
    )


def test_an_unreadable_resume_state_trains_from_the_start(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    whole, h_whole, _ = _resumable_run(tmp_path / "a.pt", epochs=3)
    again, h_again, _ = _resumable_run(tmp_path / "bad.pt", epochs=3)
    assert "cannot resume from" in capsys.readouterr().out
    assert [r["loss"] for r in h_again.rows] == [r["loss"] for r in h_whole.rows]


def test_a_resume_state_with_a_bad_checksum_is_not_loaded(tmp_path, capsys):
    with contextlib.suppress(_CutOff):
        _resumable_run(tmp_path / "b.pt", epochs=4, cut_after=2)
    data = bytearray((tmp_path / "b.pt").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the payload
    (tmp_path / "b.pt").write_bytes(bytes(data))
    whole, h_whole, _ = _resumable_run(tmp_path / "a.pt", epochs=4)
    again, h_again, _ = _resumable_run(tmp_path / "b.pt", epochs=4)
    assert "checksum mismatch" in capsys.readouterr().out
    assert [r["loss"] for r in h_again.rows] == [r["loss"] for r in h_whole.rows]


def test_a_state_that_fails_half_way_leaves_every_object_as_it_was(tmp_path):
    torch.manual_seed(0)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = EpochCheckpoint(tmp_path / "s.pt", {"a": model, "b": opt})
    saver.save(1, History(), torch.Generator())
    # the same names, but "b" is now a network: "a" loads, then "b" fails
    before = {k: v.clone() for k, v in other.state_dict().items()}
    nn.init.constant_(model.weight, 5.0)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    loader = EpochCheckpoint(tmp_path / "s.pt", {"a": model, "b": other})
    assert loader.restore(History(), torch.Generator()) == 0
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
