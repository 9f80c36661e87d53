"""Architectures as genomes: shape inference, edits, and the weights a child inherits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evoarena.encoding import nets
from evoarena.encoding.arch import (
    apply_edit,
    conv_discriminator_arch,
    conv_generator_arch,
    discriminator_arch,
    edited_arch,
    generator_arch,
    sample_crossover,
    sample_mutation,
)

IMAGE = (1, 8, 8)
LATENT = 16


def weights(arch: dict, seed: int) -> torch.Tensor:
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, seed, flat)
    return flat


def tensor(arch: dict, flat: torch.Tensor, name: str) -> torch.Tensor:
    """One parameter tensor by its module name, e.g. "2.weight" (arch["layers"][2]'s weight)."""
    return nets.layout(arch).views(flat)[name]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(bits(a), bits(b))


# --- shape inference ----------------------------------------------------------------------------------


def test_conv_shape_is_the_formula_for_kernel_3_stride_2_padding_1():
    arch = {"input": [1, 8, 8], "layers": [{"type": "conv", "out": 4, "kernel": 3, "stride": 2, "padding": 1}]}
    assert nets.shapes(arch) == [(1, 8, 8), (4, 4, 4)]  # (8 + 2 - 3) // 2 + 1 = 4


def test_deconv_shape_doubles_a_map_with_kernel_4_stride_2_padding_1():
    arch = {"input": [8, 2, 2], "layers": [{"type": "deconv", "out": 3, "kernel": 4, "stride": 2, "padding": 1}]}
    assert nets.shapes(arch) == [(8, 2, 2), (3, 4, 4)]  # (2 - 1) * 2 - 2 + 4 = 4


def test_shapes_follow_flatten_linear_reshape_bnorm_and_resize():
    arch = {"input": [2, 5, 5], "layers": [
        {"type": "conv", "out": 3, "kernel": 5}, {"type": "flatten"}, {"type": "linear", "out": 12},
        {"type": "bnorm"}, {"type": "reshape", "shape": [3, 2, 2]}, {"type": "resize", "size": [6, 4]},
        {"type": "bnorm"}, {"type": "tanh"}]}
    assert nets.shapes(arch) == [(2, 5, 5), (3, 1, 1), (3,), (12,), (12,), (3, 2, 2), (3, 6, 4), (3, 6, 4), (3, 6, 4)]


def test_inferred_shapes_match_what_torch_computes():
    arch = {"input": [3, 9, 7], "layers": [
        {"type": "conv", "out": 5, "kernel": 4, "stride": 3, "padding": 2}, {"type": "bnorm"}, {"type": "relu"},
        {"type": "deconv", "out": 2, "kernel": 5, "stride": 2, "padding": 1}, {"type": "resize", "size": [3, 11]}]}
    out = nets.forward(arch, weights(arch, 0), torch.randn(2, 3, 9, 7))
    assert tuple(out.shape[1:]) == nets.shapes(arch)[-1] == (2, 3, 11)


def test_check_names_the_layer_whose_kernel_exceeds_its_input():
    arch = conv_discriminator_arch(IMAGE, [4, 4])  # 8 -> 4 -> 2
    arch["layers"].insert(4, {"type": "conv", "out": 4, "kernel": 5, "stride": 1})
    with pytest.raises(ValueError, match=r"layers\[4\] \(conv, kernel 5\): its 2x2 input is smaller than the kernel"):
        nets.check(arch)


def test_check_names_a_linear_layer_that_gets_an_image():
    arch = {"input": [8, 3, 3], "layers": [{"type": "relu"}, {"type": "linear", "out": 4}]}
    with pytest.raises(ValueError, match=r"layers\[1\] \(linear\) gets a \[8, 3, 3\] input; .*put a flatten before it"):
        nets.check(arch)


def test_check_compares_the_output_with_the_expected_shape():
    arch = {"input": [1, 8, 8], "layers": [{"type": "conv", "out": 1, "kernel": 2}]}
    with pytest.raises(ValueError, match=r"output shape \(1, 7, 7\) != expected \(1, 8, 8\)"):
        nets.check(arch, expect_output=(1, 8, 8))


def test_build_refuses_an_impossible_arch_with_the_check_message():
    arch = {"input": [16], "layers": [{"type": "reshape", "shape": [1, 4, 5]}]}
    with pytest.raises(ValueError, match=r"layers\[0\] \(reshape to \[1, 4, 5\]\) gets a \[16\] input"):
        nets.build(arch)


def test_check_names_a_bad_field():
    arch = {"input": [4], "layers": [{"type": "linear", "out": 0}]}
    with pytest.raises(ValueError, match=r"layers\[0\] \(linear\).out = 0: must be an integer >= 1"):
        nets.check(arch)


# --- the new layer types ---------------------------------------------------------------------------------


def test_bnorm_starts_at_weight_1_bias_0_and_takes_no_buffers():
    arch = {"input": [3, 4, 4], "layers": [{"type": "conv", "out": 2, "kernel": 3}, {"type": "bnorm"}]}
    flat = weights(arch, 7)
    assert torch.equal(tensor(arch, flat, "1.weight"), torch.ones(2))
    assert torch.equal(tensor(arch, flat, "1.bias"), torch.zeros(2))
    assert nets.layout(arch).size == 2 * 3 * 9 + 2 + 2 + 2
    assert list(nets.build(arch).buffers()) == []


def test_bnorm_normalises_with_the_batch_statistics():
    arch = {"input": [3], "layers": [{"type": "bnorm"}]}
    x = torch.tensor([[1.0, 10.0, -4.0], [3.0, 20.0, -2.0]])
    out = nets.forward(arch, weights(arch, 0), x)
    # each column is {m - d, m + d}: normalised to -1, +1 (up to eps = 1e-5 in the variance)
    assert torch.allclose(out, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), atol=1e-4)


def test_resize_is_nearest_neighbour():
    arch = {"input": [1, 2, 2], "layers": [{"type": "resize", "size": [4, 4]}]}
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32)
    assert torch.equal(nets.forward(arch, torch.empty(0), x)[0, 0], expected)


# --- the families ---------------------------------------------------------------------------------------------


def test_families_give_the_arena_shapes():
    assert nets.check(generator_arch(LATENT, [32], IMAGE, out_act="tanh"))[-1] == IMAGE
    assert nets.check(conv_generator_arch(LATENT, [16, 8], IMAGE)) == [
        (16,), (64,), (16, 2, 2), (16, 2, 2), (8, 4, 4), (8, 4, 4), (8, 4, 4), (1, 8, 8)]
    assert nets.check(discriminator_arch(IMAGE, [32, 16]))[-1] == (1,)
    assert nets.check(conv_discriminator_arch(IMAGE, [8, 16]))[-2:] == [(64,), (1,)]


def test_conv_generator_refuses_a_size_that_is_not_whole_doublings():
    with pytest.raises(ValueError, match=r"out_shape \[1, 6, 6\] is not 2 doublings"):
        conv_generator_arch(LATENT, [16, 8], (1, 6, 6))


# --- add ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, at, x", [
    (generator_arch(LATENT, [32, 32], IMAGE), 2, torch.randn(16, LATENT, generator=torch.Generator().manual_seed(1))),
    (conv_discriminator_arch(IMAGE, [8, 16]), 0, torch.randn(16, *IMAGE, generator=torch.Generator().manual_seed(1))),
    (conv_generator_arch(LATENT, [16, 8], IMAGE, norm=False), 3, torch.randn(16, LATENT, generator=torch.Generator().manual_seed(1))),
    (conv_generator_arch(LATENT, [16, 8], IMAGE), 3, torch.randn(16, LATENT, generator=torch.Generator().manual_seed(1))),
], ids=["linear", "conv", "deconv", "deconv-bnorm"])
def test_add_duplicates_a_layer_as_near_identity(arch, at, x):
    parent = weights(arch, 3)
    child = edited_arch(arch, {"op": "add", "at": at, "seed": 5})
    assert child["layers"][: at + 1] + child["layers"][at + 2 :] == arch["layers"]
    assert child["layers"][at + 1]["type"] == arch["layers"][at]["type"]
    before = nets.forward(arch, parent, x)
    difference = nets.forward(child, apply_edit(arch, parent, {"op": "add", "at": at, "seed": 5}), x) - before
    # 1e-2 absolute, or relative where the outputs are larger (a bnorm after the copy scales its noise up)
    assert 0 < difference.abs().max() < 1e-2 * max(1.0, before.abs().max())


def test_add_copies_the_nearest_parametric_layer_at_or_before_the_index():
    arch = generator_arch(LATENT, [32, 24], IMAGE)  # linear 32, relu, linear 24, relu, linear 64, reshape
    child = edited_arch(arch, {"op": "add", "at": 3, "seed": 0})  # layers[3] is a relu: copies layers[2]
    assert child["layers"][:4] == [{"type": "linear", "out": 32}, {"type": "relu"}, {"type": "linear", "out": 24},
                                   {"type": "linear", "out": 24}]


def test_add_keeps_every_parent_layer_and_draws_the_copy_from_the_seed():
    arch = discriminator_arch(IMAGE, [32, 16])  # flatten, linear 32, lrelu, linear 16, lrelu, linear 1
    parent = weights(arch, 3)
    edit = {"op": "add", "at": 3, "seed": 5}
    child_arch, child = edited_arch(arch, edit), apply_edit(arch, parent, edit)
    for old, new in (("1", "1"), ("3", "3"), ("5", "6")):
        for p in ("weight", "bias"):
            assert same_bits(tensor(child_arch, child, f"{new}.{p}"), tensor(arch, parent, f"{old}.{p}"))
    copy = tensor(child_arch, child, "4.weight")
    assert (copy - torch.eye(16)).abs().max() < 1e-2 and not torch.equal(copy, torch.eye(16))
    assert not same_bits(apply_edit(arch, parent, {**edit, "seed": 6}), child)


def test_add_refuses_an_index_with_no_parametric_layer_before_it():
    with pytest.raises(ValueError, match=r"add at 0: no conv, deconv or linear layer at or before layers\[0\]"):
        edited_arch(discriminator_arch(IMAGE, [8]), {"op": "add", "at": 0, "seed": 0})


# --- delete ---------------------------------------------------------------------------------------------------


def test_delete_removes_a_layer_with_its_activation_and_resizes_the_next():
    arch = discriminator_arch(IMAGE, [32, 16])  # flatten, linear 32, lrelu, linear 16, lrelu, linear 1
    parent = weights(arch, 3)
    edit = {"op": "delete", "at": 3, "seed": 9}
    child_arch, child = edited_arch(arch, edit), apply_edit(arch, parent, edit)
    assert child_arch["layers"] == [{"type": "flatten"}, {"type": "linear", "out": 32}, {"type": "lrelu"},
                                    {"type": "linear", "out": 1}]
    assert same_bits(tensor(child_arch, child, "1.weight"), tensor(arch, parent, "1.weight"))
    last = tensor(child_arch, child, "3.weight")  # was [1, 16], now [1, 32]
    assert same_bits(last[:, :16], tensor(arch, parent, "5.weight"))
    assert same_bits(last[:, 16:], tensor(child_arch, weights(child_arch, 9), "3.weight")[:, 16:])
    assert nets.forward(child_arch, child, torch.randn(4, *IMAGE)).shape == (4, 1)


def test_delete_refuses_an_activation():
    with pytest.raises(ValueError, match=r"delete at 2: layers\[2\] is a lrelu; delete takes a conv, deconv, linear or bnorm"):
        edited_arch(discriminator_arch(IMAGE, [32]), {"op": "delete", "at": 2})


def test_an_edit_that_changes_the_output_shape_is_refused_naming_the_layer():
    arch = generator_arch(LATENT, [32], IMAGE)  # linear 32, relu, linear 64, reshape [1, 8, 8]
    with pytest.raises(ValueError, match=r"delete at 2 gives an impossible child: layers\[2\] \(reshape to \[1, 8, 8\]\) gets a \[32\] input"):
        edited_arch(arch, {"op": "delete", "at": 2})
    with pytest.raises(ValueError, match=r"output shape \(2,\) != expected \(1,\)"):
        edited_arch(discriminator_arch(IMAGE, [8]), {"op": "change", "at": 3, "field": "out", "value": 2})


# --- change ---------------------------------------------------------------------------------------------------


def test_widening_keeps_the_overlap_and_fills_the_rest_from_the_seed():
    arch = discriminator_arch(IMAGE, [32, 16])
    parent = weights(arch, 3)
    edit = {"op": "change", "at": 1, "field": "out", "value": 40, "seed": 11}
    child_arch, child = edited_arch(arch, edit), apply_edit(arch, parent, edit)
    assert child_arch["layers"][1] == {"type": "linear", "out": 40}
    grown, fed = tensor(child_arch, child, "1.weight"), tensor(child_arch, child, "3.weight")
    assert grown.shape == (40, 64) and fed.shape == (16, 40)
    assert same_bits(grown[:32], tensor(arch, parent, "1.weight"))
    assert same_bits(tensor(child_arch, child, "1.bias")[:32], tensor(arch, parent, "1.bias"))
    assert same_bits(fed[:, :32], tensor(arch, parent, "3.weight"))
    fresh = weights(child_arch, 11)  # the new rows and columns: nets.init_layers with the edit's seed
    assert same_bits(grown[32:], tensor(child_arch, fresh, "1.weight")[32:])
    assert same_bits(fed[:, 32:], tensor(child_arch, fresh, "3.weight")[:, 32:])
    other_seed = apply_edit(arch, parent, {**edit, "seed": 12})
    assert not same_bits(tensor(child_arch, other_seed, "1.weight")[32:], grown[32:])
    assert same_bits(tensor(child_arch, other_seed, "1.weight")[:32], grown[:32])


def test_narrowing_conv_channels_keeps_the_first_channels():
    arch = conv_discriminator_arch(IMAGE, [8, 16])  # conv 8, lrelu, conv 16, lrelu, flatten, linear 1
    parent = weights(arch, 3)
    edit = {"op": "change", "at": 0, "field": "out", "value": 6, "seed": 1}
    child_arch, child = edited_arch(arch, edit), apply_edit(arch, parent, edit)
    assert same_bits(tensor(child_arch, child, "0.weight"), tensor(arch, parent, "0.weight")[:6])
    assert same_bits(tensor(child_arch, child, "2.weight"), tensor(arch, parent, "2.weight")[:, :6])
    assert same_bits(tensor(child_arch, child, "5.weight"), tensor(arch, parent, "5.weight"))


def test_a_larger_kernel_keeps_the_map_size_and_centres_the_old_kernel():
    arch = conv_discriminator_arch(IMAGE, [4])  # conv kernel 3 stride 2 padding 1, lrelu, flatten, linear 1
    parent = weights(arch, 3)
    edit = {"op": "change", "at": 0, "field": "kernel", "value": 5, "seed": 2}
    child_arch, child = edited_arch(arch, edit), apply_edit(arch, parent, edit)
    assert child_arch["layers"][0] == {"type": "conv", "out": 4, "kernel": 5, "stride": 2, "padding": 2}
    assert nets.shapes(child_arch)[1] == (4, 4, 4)
    kernel = tensor(child_arch, child, "0.weight")
    assert same_bits(kernel[:, :, 1:4, 1:4], tensor(arch, parent, "0.weight"))
    ring = kernel.clone()
    ring[:, :, 1:4, 1:4] = 0
    assert ring.abs().sum() > 0  # the new outer taps come from the seed
    assert (ring.abs() <= 1 / (1 * 5 * 5) ** 0.5).all()  # torch's default bound for the child's fan-in


def test_changing_an_activation_copies_every_weight():
    arch = generator_arch(LATENT, [32], IMAGE)
    parent = weights(arch, 3)
    edit = {"op": "change", "at": 1, "field": "type", "value": "tanh", "seed": 0}
    assert edited_arch(arch, edit)["layers"][1] == {"type": "tanh"}
    assert same_bits(apply_edit(arch, parent, edit), parent)


def test_change_names_the_field_it_does_not_know():
    with pytest.raises(ValueError, match=r"change at 1 'stride' -> 2: field = 'stride': accepted: 'out', 'kernel', 'type'"):
        edited_arch(conv_discriminator_arch(IMAGE, [4]), {"op": "change", "at": 1, "field": "stride", "value": 2})


# --- crossover ------------------------------------------------------------------------------------------------


def test_crossover_keeps_each_parents_half_and_adapts_flat_widths_with_a_linear():
    a, b = discriminator_arch(IMAGE, [32, 16]), discriminator_arch(IMAGE, [24, 8])
    wa, wb = weights(a, 1), weights(b, 2)
    edit = {"op": "crossover", "cut": 3, "other_cut": 3, "other_arch": b, "seed": 4}
    child_arch, child = edited_arch(a, edit), apply_edit(a, wa, edit, wb)
    # a's flatten, linear 32, lrelu | adapter linear 32 -> 24 | b's linear 8, lrelu, linear 1
    assert child_arch["layers"][3] == {"type": "linear", "out": 24}
    assert child_arch["layers"][4:] == b["layers"][3:]
    for p in ("weight", "bias"):
        assert same_bits(tensor(child_arch, child, f"1.{p}"), tensor(a, wa, f"1.{p}"))
        assert same_bits(tensor(child_arch, child, f"4.{p}"), tensor(b, wb, f"3.{p}"))
        assert same_bits(tensor(child_arch, child, f"6.{p}"), tensor(b, wb, f"5.{p}"))
        assert same_bits(tensor(child_arch, child, f"3.{p}"), tensor(child_arch, weights(child_arch, 4), f"3.{p}"))


def test_crossover_inserts_no_adapter_where_the_junction_agrees():
    a, b = discriminator_arch(IMAGE, [32, 16]), discriminator_arch(IMAGE, [32, 8])
    child = edited_arch(a, {"op": "crossover", "cut": 3, "other_cut": 3, "other_arch": b, "seed": 0})
    assert child["layers"] == a["layers"][:3] + b["layers"][3:]


def test_crossover_of_images_resizes_then_convolves_1x1():
    a = conv_discriminator_arch(IMAGE, [8, 16])  # conv 8 (4x4), lrelu | ...
    b = {"input": [1, 8, 8], "layers": [{"type": "conv", "out": 5, "kernel": 3, "stride": 1, "padding": 1}, {"type": "relu"},
                                        {"type": "conv", "out": 4, "kernel": 3, "stride": 2, "padding": 1}, {"type": "relu"},
                                        {"type": "flatten"}, {"type": "linear", "out": 1}]}
    wa, wb = weights(a, 1), weights(b, 2)
    edit = {"op": "crossover", "cut": 2, "other_cut": 2, "other_arch": b, "seed": 3}  # [8, 4, 4] meets [5, 8, 8]
    child_arch, child = edited_arch(a, edit), apply_edit(a, wa, edit, wb)
    assert child_arch["layers"][2:4] == [{"type": "resize", "size": [8, 8]},
                                         {"type": "conv", "out": 5, "kernel": 1, "stride": 1, "padding": 0}]
    assert same_bits(tensor(child_arch, child, "0.weight"), tensor(a, wa, "0.weight"))
    assert same_bits(tensor(child_arch, child, "4.weight"), tensor(b, wb, "2.weight"))
    assert same_bits(tensor(child_arch, child, "7.weight"), tensor(b, wb, "5.weight"))
    assert nets.forward(child_arch, child, torch.randn(2, *IMAGE)).shape == (2, 1)


def test_crossover_refuses_a_junction_of_a_vector_and_an_image():
    a, b = generator_arch(LATENT, [32], IMAGE), conv_generator_arch(LATENT, [16, 8], IMAGE)
    with pytest.raises(ValueError, match=r"junction joins a \[32\] output to a \[16, 2, 2\] input"):
        edited_arch(a, {"op": "crossover", "cut": 2, "other_cut": 3, "other_arch": b, "seed": 0})


def test_crossover_needs_the_other_parents_weights():
    a = discriminator_arch(IMAGE, [8])
    with pytest.raises(ValueError, match=r"needs other_flat"):
        apply_edit(a, weights(a, 0), {"op": "crossover", "cut": 1, "other_cut": 1, "other_arch": a, "seed": 0})


# --- determinism and the samplers -----------------------------------------------------------------------------


@pytest.mark.parametrize("edit", [
    {"op": "add", "at": 3, "seed": 8},
    {"op": "delete", "at": 3, "seed": 8},
    {"op": "change", "at": 3, "field": "out", "value": 21, "seed": 8},
    {"op": "crossover", "cut": 3, "other_cut": 1, "other_arch": discriminator_arch(IMAGE, [12]), "seed": 8},
], ids=lambda e: e["op"])
def test_apply_edit_gives_the_same_bits_every_call(edit):
    arch, other = discriminator_arch(IMAGE, [32, 16]), discriminator_arch(IMAGE, [12])
    parent, other_flat = weights(arch, 1), weights(other, 2)
    first = apply_edit(arch, parent.clone(), edit, other_flat)
    assert same_bits(apply_edit(arch, parent.clone(), edit, other_flat), first)
    assert first.numel() == nets.layout(edited_arch(arch, edit)).size


def test_mutations_never_change_the_last_layers_width():
    arch = generator_arch(LATENT, [32], IMAGE)  # linear 32, relu, linear 64, reshape
    rng = np.random.default_rng(0)
    edits = [sample_mutation(rng, arch, IMAGE, kinds=("change", "delete"), large=large) for large in (False, True) * 50]
    assert all(e is not None for e in edits)
    assert not [e for e in edits if e["at"] == 2]


def test_large_mutations_double_or_halve_a_width_and_small_ones_move_it_at_most_25_percent():
    arch = discriminator_arch(IMAGE, [40])  # flatten, linear 40, lrelu, linear 1
    rng = np.random.default_rng(1)
    widths = {large: [e["value"] for e in (sample_mutation(rng, arch, (1,), kinds=("change",), large=large) for _ in range(60))
                      if e["field"] == "out"] for large in (False, True)}
    assert set(widths[True]) == {20, 80}
    assert widths[False] and all(30 <= w <= 50 and w != 40 for w in widths[False])


def test_sampling_returns_none_when_no_edit_keeps_the_output():
    lone = {"input": [4], "layers": [{"type": "linear", "out": 1}]}
    assert sample_mutation(np.random.default_rng(0), lone, (1,), kinds=("delete",)) is None
    assert sample_crossover(np.random.default_rng(0), lone, lone, (1,)) is None


FAMILIES = {
    IMAGE: [generator_arch(LATENT, [32], IMAGE, out_act="tanh"), generator_arch(LATENT, [24, 48], IMAGE),
            conv_generator_arch(LATENT, [16, 8], IMAGE, out_act="tanh"), conv_generator_arch(LATENT, [8], IMAGE)],
    (1,): [discriminator_arch(IMAGE, [32, 16]), discriminator_arch(IMAGE, [20]),
           conv_discriminator_arch(IMAGE, [8, 16]), conv_discriminator_arch(IMAGE, [6])],
}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(sorted(FAMILIES)), data=st.data())
def test_any_sequence_of_sampled_edits_gives_a_network_that_runs(role, data):
    population = FAMILIES[role]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))
    start = data.draw(st.integers(0, len(population) - 1), label="start")
    arch, flat = population[start], weights(population[start], start)
    for step in range(data.draw(st.integers(1, 6), label="edits")):
        if data.draw(st.booleans(), label=f"crossover {step}"):
            other_index = data.draw(st.integers(0, len(population) - 1), label=f"other {step}")
            other = population[other_index]
            edit, other_flat = sample_crossover(rng, arch, other, role), weights(other, 100 + other_index)
        else:
            edit, other_flat = sample_mutation(rng, arch, role, large=data.draw(st.booleans(), label=f"large {step}")), None
        if edit is None:
            continue
        arch, flat = edited_arch(arch, edit), apply_edit(arch, flat, edit, other_flat)
        assert nets.check(arch)[-1] == role
        assert flat.numel() == nets.layout(arch).size
    x = torch.randn(4, *nets.check(arch)[0], generator=torch.Generator().manual_seed(0))
    out = nets.forward(arch, flat, x)
    assert tuple(out.shape) == (4, *role)
    assert torch.isfinite(out).all()
