"""The arena's gradient ops (problems/gan.py) on tiny networks and a toy target: a Gaussian at (3, 3)."""

from __future__ import annotations

import pytest
import torch

from evoarena.encoding import nets
from evoarena.problems import gan

G_ARCH = {"input": [4], "layers": [{"type": "linear", "out": 32}, {"type": "relu"}, {"type": "linear", "out": 2}]}
D_ARCH = {"input": [2], "layers": [{"type": "linear", "out": 32}, {"type": "lrelu"}, {"type": "linear", "out": 1}]}
TARGET = torch.tensor([3.0, 3.0])
ADAM = {"optimizer": "adam", "lr": 2e-3, "loss": "ns"}


def init(arch: dict, seed: int) -> torch.Tensor:
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, seed, flat)
    return flat


def constant_discriminator(logit: float) -> torch.Tensor:
    """All weights 0, final bias `logit`: every input gets exactly that logit."""
    flat = torch.zeros(nets.layout(D_ARCH).size)
    assert nets.layout(D_ARCH).slots[-1].name == "2.bias"
    flat[-1] = logit
    return flat


def threshold_discriminator(cut: float) -> torch.Tensor:
    """Accepts exactly the samples whose first coordinate exceeds `cut`: hidden unit 0 is
    x0 - cut, the leaky ReLU keeps its sign, and the logit is that unit."""
    flat = torch.zeros(nets.layout(D_ARCH).size)
    views = nets.layout(D_ARCH).views(flat)
    views["0.weight"][0, 0] = 1.0
    views["0.bias"][0] = -cut
    views["2.weight"][0, 0] = 1.0
    return flat


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny networks: a second intra-op thread only adds synchronisation (10x slower on a busy 2-core box)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return torch.randn(2048, 2, generator=torch.Generator().manual_seed(0)) * 0.1 + TARGET


def distance_to_target(g_flat: torch.Tensor) -> float:
    samples = gan.generate(G_ARCH, g_flat, 2048, torch.Generator().manual_seed(99))
    return (samples.mean(0) - TARGET).norm().item()


def accept(d_flat: torch.Tensor, x: torch.Tensor) -> float:
    return gan.acceptance(D_ARCH, d_flat, x).item()


# ---------------------------------------------------------------- train_pair


def test_train_pair_is_deterministic_in_its_seed(real):
    g, d = init(G_ARCH, 1), init(D_ARCH, 2)
    first = gan.train_pair(G_ARCH, g, ADAM, D_ARCH, d, ADAM, real, 20, 16, seed=7)
    again = gan.train_pair(G_ARCH, g, ADAM, D_ARCH, d, ADAM, real, 20, 16, seed=7)
    other = gan.train_pair(G_ARCH, g, ADAM, D_ARCH, d, ADAM, real, 20, 16, seed=8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[2] == again[2]
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert first[2] != other[2]


def test_train_pair_trace_has_one_record_of_plain_floats_per_step(real):
    _, _, trace = gan.train_pair(G_ARCH, init(G_ARCH, 1), ADAM, D_ARCH, init(D_ARCH, 2), ADAM, real, 5, 8, seed=0)
    assert len(trace) == 5
    for step in trace:
        assert set(step) == {"g_loss", "d_loss", "d_real_acc", "d_fake_acc"}
        assert all(type(v) is float for v in step.values())
        # accuracies are shares of a batch of 8
        assert (step["d_real_acc"] * 8).is_integer() and (step["d_fake_acc"] * 8).is_integer()


def per_step_trace(g_flat, d_flat, real, steps, batch_size, seed) -> list[dict]:
    """train_pair's trace as the code before the batched trace computed it: a row of four floats
    made at every step (issue 22); the same losses, batches and updates."""
    g, g_params, g_opt = gan._trainable(G_ARCH, g_flat, ADAM)
    d, d_params, d_opt = gan._trainable(D_ARCH, d_flat, ADAM)
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(steps):
        fake = g(torch.randn(batch_size, *G_ARCH["input"], generator=rng))
        x = real[torch.randint(len(real), (batch_size,), generator=rng)]
        real_logits, fake_logits = d(x).view(-1), d(fake.detach()).view(-1)
        d_loss = gan.discriminator_loss(real_logits, fake_logits)
        d_opt.zero_grad(); d_loss.backward(inputs=d_params); d_opt.step()  # noqa: E702
        g_loss = gan.GENERATOR_LOSSES["ns"](d(fake).view(-1))
        g_opt.zero_grad(); g_loss.backward(inputs=g_params); g_opt.step()  # noqa: E702
        rows.append(torch.stack([g_loss.detach(), d_loss.detach(), (real_logits.detach() > 0).float().mean(),
                                 (fake_logits.detach() < 0).float().mean()]))
    return [dict(zip(("g_loss", "d_loss", "d_real_acc", "d_fake_acc"), row)) for row in torch.stack(rows).tolist()]


def test_train_pair_stores_the_trace_a_row_per_step_gave_bit_for_bit():
    g, d = init(G_ARCH, 3), init(D_ARCH, 4)
    near = 0.1 * torch.randn(512, 2, generator=torch.Generator().manual_seed(3))  # where G starts: mixed verdicts
    for batch_size in (7, 12, 64):  # shares of 7 and 12 are not exact binary fractions
        _, _, trace = gan.train_pair(G_ARCH, g, ADAM, D_ARCH, d, ADAM, near, 30, batch_size, seed=5)
        assert trace == per_step_trace(g, d, near, 30, batch_size, seed=5)
        for key in ("d_real_acc", "d_fake_acc"):  # the accuracies move: not constants compared
            assert len({row[key] for row in trace}) > 2


def test_train_pair_first_step_losses_match_the_formulas(real):
    # Before any update the trace's losses are those of the initial networks on the step's batches;
    # rebuild the batches from the same seeded stream (latents first, then real indices).
    g, d = init(G_ARCH, 1), init(D_ARCH, 2)
    _, _, trace = gan.train_pair(G_ARCH, g, {**ADAM, "loss": "ls"}, D_ARCH, d, ADAM, real, 1, 8, seed=3)
    rng = torch.Generator().manual_seed(3)
    z = torch.randn(8, 4, generator=rng)
    x = real[torch.randint(len(real), (8,), generator=rng)]
    fake = nets.forward(G_ARCH, g, z)
    real_p = torch.sigmoid(nets.forward(D_ARCH, d, x)).view(-1)
    fake_p = torch.sigmoid(nets.forward(D_ARCH, d, fake)).view(-1)
    d_loss = -(real_p.log().mean() + (1 - fake_p).log().mean())
    assert trace[0]["d_loss"] == pytest.approx(d_loss.item(), rel=1e-5)
    assert trace[0]["d_real_acc"] == (real_p > 0.5).float().mean().item()
    assert trace[0]["d_fake_acc"] == (fake_p < 0.5).float().mean().item()


@pytest.mark.parametrize("loss", ["ns", "ls", "hinge"])
def test_train_pair_moves_the_generator_to_the_data_for_each_loss(real, loss):
    g = init(G_ARCH, 1)
    before = distance_to_target(g)
    assert before > 3.5  # the untrained generator sits near the origin
    meta = {"optimizer": "adam", "lr": 2e-3, "loss": loss}
    new_g, _, _ = gan.train_pair(G_ARCH, g, meta, D_ARCH, init(D_ARCH, 2), ADAM, real, 300, 64, seed=5)
    assert distance_to_target(new_g) < before / 2


@pytest.mark.parametrize("optimizer, lr", [("adam", 2e-3), ("sgd", 1e-3), ("rmsprop", 1e-3)])
def test_train_pair_moves_the_generator_to_the_data_for_each_optimizer(real, optimizer, lr):
    g = init(G_ARCH, 1)
    before = distance_to_target(g)
    meta = {"optimizer": optimizer, "lr": lr, "loss": "ns"}
    new_g, _, _ = gan.train_pair(G_ARCH, g, meta, D_ARCH, init(D_ARCH, 2), meta, real, 300, 64, seed=5)
    assert distance_to_target(new_g) < before / 2


# ---------------------------------------------------------------- cross-training


@pytest.fixture(scope="module")
def sharp_discriminator(real) -> torch.Tensor:
    """A discriminator trained to reject the untrained generator init(G_ARCH, 1)."""
    d, _ = gan.train_discriminator(D_ARCH, init(D_ARCH, 2), ADAM, real, G_ARCH, init(G_ARCH, 1), 200, 64, seed=1)
    return d


def test_train_discriminator_learns_to_reject_the_generator_and_accept_real(real):
    g, d = init(G_ARCH, 1), init(D_ARCH, 2)
    fakes = gan.generate(G_ARCH, g, 1024, torch.Generator().manual_seed(5))
    new_d, trace = gan.train_discriminator(D_ARCH, d, ADAM, real, G_ARCH, g, 200, 64, seed=1)
    assert accept(new_d, fakes) < 0.05 < accept(d, fakes)
    assert accept(new_d, real) > 0.95
    assert set(trace[0]) == {"d_loss", "d_real_acc", "d_fake_acc"} and len(trace) == 200
    assert trace[-1]["d_loss"] < trace[0]["d_loss"]


def test_train_generator_fools_a_frozen_discriminator_and_leaves_it_unchanged(sharp_discriminator):
    g, d = init(G_ARCH, 1), sharp_discriminator
    d_before = d.clone()
    z = torch.Generator().manual_seed(5)
    assert accept(d, gan.generate(G_ARCH, g, 1024, z)) < 0.05
    new_g, trace = gan.train_generator(G_ARCH, g, ADAM, D_ARCH, d, 200, 64, seed=2)
    assert torch.equal(d, d_before)
    assert accept(d, gan.generate(G_ARCH, new_g, 1024, torch.Generator().manual_seed(5))) > 0.9
    assert set(trace[0]) == {"g_loss", "d_fake_acc"} and len(trace) == 200


def test_cross_training_is_deterministic_in_its_seed(real, sharp_discriminator):
    g = init(G_ARCH, 1)
    a = gan.train_generator(G_ARCH, g, ADAM, D_ARCH, sharp_discriminator, 10, 16, seed=4)
    b = gan.train_generator(G_ARCH, g, ADAM, D_ARCH, sharp_discriminator, 10, 16, seed=4)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    c = gan.train_discriminator(D_ARCH, init(D_ARCH, 2), ADAM, real, G_ARCH, g, 10, 16, seed=4)
    d = gan.train_discriminator(D_ARCH, init(D_ARCH, 2), ADAM, real, G_ARCH, g, 10, 16, seed=4)
    assert torch.equal(c[0], d[0]) and c[1] == d[1]


# ---------------------------------------------------------------- match_block


def test_match_block_with_constant_discriminators_gives_exact_verdicts(real):
    gens = [(G_ARCH, init(G_ARCH, 1)), (G_ARCH, init(G_ARCH, 3))]
    yes, no = constant_discriminator(5.0), constant_discriminator(-5.0)
    result = gan.match_block(gens, [(D_ARCH, yes), (D_ARCH, no)], real, 100, seed=0)
    assert result["matrix"] == [[1.0, 0.0], [1.0, 0.0]]
    assert result["real_accept"] == [1.0, 0.0]
    assert [s.shape for s in result["samples"]] == [torch.Size([100, 2])] * 2


def test_a_liar_reports_the_opposite_verdict(real):
    gens = [(G_ARCH, init(G_ARCH, 1))]
    discs = [(D_ARCH, constant_discriminator(-5.0)), (D_ARCH, constant_discriminator(-5.0)), (D_ARCH, constant_discriminator(5.0))]
    result = gan.match_block(gens, discs, real, 50, seed=0, liars=frozenset({1, 2}))
    assert result["matrix"] == [[0.0, 1.0, 0.0]]
    assert result["real_accept"] == [0.0, 1.0, 0.0]


def test_match_block_counts_the_fraction_of_samples_taken_for_real(real):
    # init(G_ARCH, 1)'s samples have a first coordinate of about -0.31 +- 0.12: a cut at -0.3
    # splits them; the real data sits at 3, so a cut at 3 splits it too.
    g = init(G_ARCH, 1)
    discs = [(D_ARCH, threshold_discriminator(-0.3)), (D_ARCH, threshold_discriminator(3.0))]
    result = gan.match_block([(G_ARCH, g)], discs, real, 500, seed=0)
    x0 = result["samples"][0][:, 0]
    row = [(x0 > -0.3).sum().item() / 500, (x0 > 3.0).sum().item() / 500]
    assert 0.2 < row[0] < 0.8 and row[1] == 0.0
    assert result["matrix"] == [row]
    assert result["real_accept"] == [1.0, (real[:, 0] > 3.0).sum().item() / len(real)]
    assert 0.4 < result["real_accept"][1] < 0.6


def test_a_generators_samples_do_not_depend_on_the_rest_of_the_block(real):
    g1, g2 = init(G_ARCH, 1), init(G_ARCH, 3)
    d = threshold_discriminator(-0.3)
    pair = gan.match_block([(G_ARCH, g1), (G_ARCH, g2)], [(D_ARCH, d)], real, 200, seed=9)
    alone = gan.match_block([(G_ARCH, g1)], [(D_ARCH, d)], real, 200, seed=9)
    assert torch.equal(pair["samples"][0], alone["samples"][0])
    assert pair["matrix"][0] == alone["matrix"][0]
    assert 0.0 < pair["matrix"][0][0] < 1.0  # a real fraction, not a degenerate verdict


def test_match_block_samples_are_seeded(real):
    gens, discs = [(G_ARCH, init(G_ARCH, 1))], [(D_ARCH, init(D_ARCH, 2))]
    a = gan.match_block(gens, discs, real, 64, seed=1)["samples"][0]
    b = gan.match_block(gens, discs, real, 64, seed=1)["samples"][0]
    c = gan.match_block(gens, discs, real, 64, seed=2)["samples"][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- generate


def test_generate_does_not_depend_on_the_chunk_size():
    g = init(G_ARCH, 1)
    whole = gan.generate(G_ARCH, g, 1000, torch.Generator().manual_seed(0))
    chunked = gan.generate(G_ARCH, g, 1000, torch.Generator().manual_seed(0), chunk=64)
    assert whole.shape == (1000, 2)
    assert torch.equal(whole, chunked)
    assert not whole.requires_grad


# ---------------------------------------------------------------- inputs are left alone


def test_no_op_modifies_its_inputs(real):
    g, d, data = init(G_ARCH, 1), init(D_ARCH, 2), real.clone()
    copies = (g.clone(), d.clone(), data.clone())
    meta = dict(ADAM)
    gan.train_pair(G_ARCH, g, meta, D_ARCH, d, meta, data, 5, 8, seed=0)
    gan.train_generator(G_ARCH, g, meta, D_ARCH, d, 5, 8, seed=0)
    gan.train_discriminator(D_ARCH, d, meta, data, G_ARCH, g, 5, 8, seed=0)
    gan.match_block([(G_ARCH, g)], [(D_ARCH, d)], data, 16, seed=0)
    assert torch.equal(g, copies[0]) and torch.equal(d, copies[1]) and torch.equal(data, copies[2])
    assert meta == ADAM
    assert not g.requires_grad and not d.requires_grad


def test_the_returned_flats_do_not_share_memory_with_the_inputs(real):
    g, d = init(G_ARCH, 1), init(D_ARCH, 2)
    new_g, new_d, _ = gan.train_pair(G_ARCH, g, ADAM, D_ARCH, d, ADAM, real, 1, 8, seed=0)
    assert new_g.data_ptr() != g.data_ptr() and new_d.data_ptr() != d.data_ptr()
    assert new_g.shape == g.shape and new_d.shape == d.shape and new_g.dtype == torch.float32


# ---------------------------------------------------------------- clear errors


def test_an_unknown_optimizer_is_named_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"optimizer = 'adagrad'.*\['adam', 'rmsprop', 'sgd'\]"):
        gan.make_optimizer({"optimizer": "adagrad", "lr": 1e-3}, [torch.zeros(1, requires_grad=True)])


def test_a_non_positive_learning_rate_is_refused():
    with pytest.raises(ValueError, match=r"lr = -0.1"):
        gan.make_optimizer({"optimizer": "sgd", "lr": -0.1}, [torch.zeros(1, requires_grad=True)])


def test_an_unknown_generator_loss_is_named_with_the_accepted_ones(real):
    with pytest.raises(ValueError, match=r"loss = 'wasserstein'.*\['hinge', 'ls', 'ns'\]"):
        gan.train_pair(G_ARCH, init(G_ARCH, 1), {**ADAM, "loss": "wasserstein"}, D_ARCH, init(D_ARCH, 2), ADAM, real, 1, 8, seed=0)


@pytest.mark.parametrize("steps, batch_size, field", [(0, 8, "steps = 0"), (1, 0, "batch_size = 0"), (1.5, 8, "steps = 1.5")])
def test_steps_and_batch_size_must_be_positive_integers(real, steps, batch_size, field):
    with pytest.raises(ValueError, match=field):
        gan.train_pair(G_ARCH, init(G_ARCH, 1), ADAM, D_ARCH, init(D_ARCH, 2), ADAM, real, steps, batch_size, seed=0)
    with pytest.raises(ValueError, match=field):
        gan.train_generator(G_ARCH, init(G_ARCH, 1), ADAM, D_ARCH, init(D_ARCH, 2), steps, batch_size, seed=0)
    with pytest.raises(ValueError, match=field):
        gan.train_discriminator(D_ARCH, init(D_ARCH, 2), ADAM, real, G_ARCH, init(G_ARCH, 1), steps, batch_size, seed=0)


def test_real_data_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"shape \(3,\); the discriminator takes \(2,\)"):
        gan.train_pair(G_ARCH, init(G_ARCH, 1), ADAM, D_ARCH, init(D_ARCH, 2), ADAM, torch.zeros(10, 3), 1, 8, seed=0)


def test_a_discriminator_with_more_than_one_output_is_refused(real):
    two_logits = {"input": [2], "layers": [{"type": "linear", "out": 2}]}
    with pytest.raises(ValueError, match=r"one logit per sample; this one outputs shape \(2,\)"):
        gan.train_pair(G_ARCH, init(G_ARCH, 1), ADAM, two_logits, init(two_logits, 0), ADAM, real, 1, 8, seed=0)


def test_a_liar_index_outside_the_block_is_refused(real):
    with pytest.raises(ValueError, match=r"liars \[3\]"):
        gan.match_block([(G_ARCH, init(G_ARCH, 1))], [(D_ARCH, init(D_ARCH, 2))], real, 8, seed=0, liars=frozenset({3}))
