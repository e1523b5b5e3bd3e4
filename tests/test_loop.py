"""The shared optimisation loop: stops, checkpoints, resumes exactly, logs, and stops on NaN."""

import json
import math

import pytest
import torch

from zerolevel.errors import InputError
from zerolevel.optim.loop import DivergedError, LoopConfig, load_checkpoint, read_log, run_loop


class NoisyRegression:
    """A toy method: fit w to a target with Adam on noisy minibatches drawn from the global RNG
    (so that exact resumption needs the saved random state)."""

    def __init__(self, nan_at: int | None = None, interrupt_at: int | None = None):
        self.w = torch.nn.Parameter(torch.zeros(4))
        self.optimizer = torch.optim.Adam([self.w], lr=0.05)
        self.target = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.nan_at, self.interrupt_at = nan_at, interrupt_at

    def step(self, iteration: int) -> dict[str, float]:
        if iteration == self.interrupt_at:
            raise KeyboardInterrupt
        self.optimizer.zero_grad()
        noise = 0.1 * torch.randn(4)
        loss = ((self.w - self.target - noise) ** 2).sum()
        if iteration == self.nan_at:
            loss = loss * float("nan")
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "w0": self.w[0].item()}

    def state_dict(self):
        return {"w": self.w.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])


def quiet(**kwargs) -> LoopConfig:
    return LoopConfig(progress=False, **kwargs)


def test_runs_logs_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    method = NoisyRegression()
    result = run_loop(method, tmp_path, quiet(iters=50, log_every=10, checkpoint_every=20))
    assert result.iterations == 50 and result.stopped == "iterations"
    assert result.losses["loss"] < 5.0  # it optimised: the initial loss is ~14
    log = read_log(tmp_path / "log.jsonl")
    assert [line["iter"] for line in log] == [10, 20, 30, 40, 50]
    assert log[-1]["loss"] == pytest.approx(result.losses["loss"])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 50
    assert "50 iterations" in result.summary()


def test_budget_stops_early(tmp_path):
    result = run_loop(NoisyRegression(), tmp_path, quiet(iters=10**9, budget_s=0.2))
    assert result.stopped == "budget" and 0 < result.iterations < 10**9 and result.seconds >= 0.2


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    torch.manual_seed(0)
    straight = NoisyRegression()
    run_loop(straight, tmp_path / "a", quiet(iters=30, log_every=5))

    torch.manual_seed(0)
    first = NoisyRegression(interrupt_at=17)
    with pytest.raises(KeyboardInterrupt):
        run_loop(first, tmp_path / "b", quiet(iters=30, log_every=5, checkpoint_every=10))
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == 17
    torch.manual_seed(123)  # the resumed process starts with another random state
    second = NoisyRegression()
    result = run_loop(second, tmp_path / "b", quiet(iters=30, log_every=5), resume=True)
    assert result.resumed_from == 17 and result.iterations == 30
    assert torch.equal(second.w, straight.w)
    log_a, log_b = read_log(tmp_path / "a" / "log.jsonl"), read_log(tmp_path / "b" / "log.jsonl")
    assert [line["iter"] for line in log_b] == [5, 10, 15, 20, 25, 30]
    assert [line["loss"] for line in log_b] == [line["loss"] for line in log_a]


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    """A folder holding a checkpoint of another kind of run (its `name`, e.g. another network's
    training) is one clear error naming the checkpoint, and the checkpoint stays as it was."""
    run_loop(NoisyRegression(), tmp_path, quiet(iters=3), name="softras")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(InputError, match="a checkpoint of a softras run, not of a tetnet one") as caught:
        run_loop(NoisyRegression(), tmp_path, quiet(iters=6), resume=True, name="tetnet")
    assert caught.value.path == str(tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert run_loop(NoisyRegression(), tmp_path, quiet(iters=6), resume=True, name="softras").resumed_from == 3


def test_resume_rewinds_the_log_to_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    run_loop(NoisyRegression(), tmp_path, quiet(iters=20, log_every=2, checkpoint_every=10**6,
                                                checkpoint_every_s=10**6))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 20
    # a log written past the checkpoint (a crash between the two) is cut back on resume
    with (tmp_path / "log.jsonl").open("a") as log:
        log.write(json.dumps({"iter": 22, "time": 1.0, "loss": 0.0}) + "\n")
    run_loop(NoisyRegression(), tmp_path, quiet(iters=24, log_every=2), resume=True)
    iters = [line["iter"] for line in read_log(tmp_path / "log.jsonl")]
    assert iters == list(range(2, 25, 2))


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(DivergedError, match=r"diverged at iteration 26 \(loss=nan") as excinfo:
        run_loop(NoisyRegression(nan_at=25), tmp_path, quiet(iters=100, checkpoint_every=10))
    assert "checkpoint.pt" in str(excinfo.value)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 20
    assert torch.isfinite(checkpoint["state"]["w"]).all()


class Unstable(NoisyRegression):
    """Diverges while its learning rate is above 0.06 once past iteration 12: recoverable by a
    smaller step. Its step scale is part of its state, as in the real methods."""

    def __init__(self, lr: float = 0.2):
        super().__init__()
        self.lr, self.scale = lr, 1.0

    def step(self, iteration: int) -> dict[str, float]:
        self.optimizer.param_groups[0]["lr"] = self.lr * self.scale
        losses = super().step(iteration)
        if iteration >= 12 and self.lr * self.scale > 0.06:
            losses["loss"] = float("nan")
        return losses

    def reduce_step(self, factor: float) -> None:
        self.scale *= factor

    def state_dict(self):
        return {**super().state_dict(), "scale": self.scale}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.scale = state["scale"]


def test_a_non_finite_loss_is_survived_with_a_smaller_step(tmp_path):
    torch.manual_seed(0)
    task = Unstable()
    result = run_loop(task, tmp_path, quiet(iters=40, checkpoint_every=10, log_every=1))
    # 0.2 -> 0.1 -> 0.05: two recoveries, each back to the checkpoint at iteration 10
    assert result.iterations == 40 and result.recoveries == 2
    assert task.scale * task.lr == pytest.approx(0.05)
    log = read_log(tmp_path / "log.jsonl")
    events = [row for row in log if "event" in row]
    assert [(e["iter"], e["failed_at"]) for e in events] == [(10, 13), (10, 13)]
    values = [row["iter"] for row in log if "event" not in row]
    assert values == list(range(1, 11)) + list(range(11, 41))  # the failed steps' lines are gone
    assert all(math.isfinite(row["loss"]) for row in log if "loss" in row)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["recoveries"] == 2
    assert "2 recoveries" in result.summary()


def test_recovery_is_bounded(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(DivergedError, match=r"diverged at iteration 13 .* after 1 recoveries"):
        run_loop(Unstable(lr=0.5), tmp_path, quiet(iters=40, checkpoint_every=10, max_recoveries=1))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 10
