"""The shared noise table: deterministic from its seed, built once per machine, shared in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evoarena.encoding.noise import CHUNK, generate, open_noise, table_path


def test_file_holds_the_same_samples_as_generate(tmp_path):
    table = open_noise(3, 2**16, tmp_path)
    np.testing.assert_array_equal(np.asarray(table.array), generate(3, 2**16))


def test_two_directories_get_the_same_table(tmp_path):
    first = open_noise(3, 2**17, tmp_path / "worker-a")
    second = open_noise(3, 2**17, tmp_path / "worker-b")
    assert first is not second
    assert table_path(tmp_path / "worker-a", 3, 2**17).read_bytes() == table_path(tmp_path / "worker-b", 3, 2**17).read_bytes()


def test_the_seed_matters(tmp_path):
    assert not np.array_equal(generate(3, 2**16), generate(4, 2**16))


def test_samples_look_standard_normal():
    assert generate(0, 16).dtype == np.float32
    samples = generate(0, 2**20).astype(np.float64)
    assert abs(samples.mean()) < 0.01
    assert abs(samples.std() - 1.0) < 0.01


def test_a_smaller_table_is_the_start_of_a_larger_one():
    # Chunking is part of the definition: chunk i always comes from rng([seed, i]), whatever the size.
    small, large = 2**20 + 5, 2**21
    assert CHUNK == 2**20
    np.testing.assert_array_equal(generate(9, small), generate(9, large)[:small])
    np.testing.assert_array_equal(generate(9, 2**16), generate(9, large)[: 2**16])


def test_a_half_written_file_is_rebuilt(tmp_path):
    path = table_path(tmp_path, 5, 2**16)
    path.write_bytes(b"\0" * (2**16 * 2))  # a crash halfway through writing
    table = open_noise(5, 2**16, tmp_path)
    assert path.stat().st_size == 2**16 * 4
    np.testing.assert_array_equal(np.asarray(table.array), generate(5, 2**16))


def test_no_temporary_file_is_left_behind(tmp_path):
    open_noise(5, 2**16, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [table_path(tmp_path, 5, 2**16).name]


@pytest.mark.parametrize("offset, length", [(-1, 10), (2**16 - 9, 10), (2**16, 1), (0, 2**16 + 1)])
def test_slices_outside_the_table_raise(tmp_path, offset, length):
    table = open_noise(1, 2**16, tmp_path)
    with pytest.raises(ValueError, match="outside the table"):
        table.slice(offset, length)


def test_slices_inside_the_table_read_the_table(tmp_path):
    table = open_noise(1, 2**16, tmp_path)
    expected = generate(1, 2**16)
    np.testing.assert_array_equal(table.slice(0, 2**16).numpy(), expected)
    np.testing.assert_array_equal(table.slice(2**16 - 10, 10).numpy(), expected[-10:])
    np.testing.assert_array_equal(table.slice(100, 7).numpy(), expected[100:107])


def test_opening_twice_in_one_process_shares_one_table(tmp_path):
    first = open_noise(2, 2**16, tmp_path)
    assert open_noise(2, 2**16, tmp_path) is first
    tensor = first.tensor()
    assert first.tensor("cpu") is tensor
    # the tensor is the memory map itself, not a copy of it
    assert tensor.data_ptr() == first.array.ctypes.data
    assert first.slice(10, 5).data_ptr() == tensor.data_ptr() + 10 * 4
    assert tensor.dtype == torch.float32 and tensor.shape == (2**16,)


def test_sample_offset_fits_the_slice(tmp_path):
    table = open_noise(2, 2**16, tmp_path)
    rng = np.random.default_rng(0)
    offsets = [table.sample_offset(rng, 2**16 - 3) for _ in range(200)]
    assert set(offsets) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="noise table"):
        table.sample_offset(rng, 2**16 + 1)


def test_known_values_of_the_default_table_are_pinned():
    # Written down from NumPy 2's PCG64 stream when the table was defined: a NumPy whose stream
    # differs fails here, before any experiment silently runs on another table.
    table = generate(1234, 2**24)
    assert table[:3].tolist() == [-1.930582880973816, 2.7258918285369873, 1.5235309600830078]
    assert table[CHUNK : CHUNK + 2].tolist() == [-0.3371935784816742, 0.16701918840408325]
    assert table[-1].item() == 0.1793903410434723
    assert generate(7, 2**16)[:2].tolist() == [1.5219693183898926, -1.1441057920455933]


def test_the_file_is_named_by_the_tables_fingerprint(tmp_path):
    assert table_path(tmp_path, 1234, 2**24).name == "noise-seed1234-size16777216-4159c76f8440fe95.f32"
    assert table_path(tmp_path, 7, 2**16).name == "noise-seed7-size65536-3d6657b6c99155d9.f32"


def test_a_file_of_the_right_size_but_other_content_is_rebuilt_not_trusted(tmp_path):
    path = table_path(tmp_path, 11, 2**16)
    path.write_bytes(np.zeros(2**16, dtype=np.float32).tobytes())  # the right size, the wrong table
    table = open_noise(11, 2**16, tmp_path)
    assert np.array_equal(np.asarray(table.array), generate(11, 2**16))
