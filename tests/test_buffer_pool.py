"""The buffer pool hands a buffer out again only once nothing made from it is alive."""

import weakref

import numpy as np

from rnncore.buffer_pool import ALIGN, MIN_BYTES, BufferPool, aligned_copy, aligned_zeros

N = MIN_BYTES // 4  # float32 elements of one pooled buffer


def test_a_dropped_array_frees_its_buffer_for_the_next_call():
    pool = BufferPool()
    a = pool.empty((N,), np.float32)
    address = a.ctypes.data
    del a
    b = pool.empty((2, N // 2), np.float32)
    assert b.ctypes.data == address and b.shape == (2, N // 2)
    assert pool.held_bytes == MIN_BYTES


def test_an_array_still_alive_is_never_handed_out_twice():
    pool = BufferPool()
    a = pool.empty((N,), np.float32)
    a[:] = 1.0
    view = a[::2]  # a view of a view keeps the buffer busy as well
    del a
    b = pool.empty((N,), np.float32)
    b[:] = 2.0
    assert np.all(view == 1.0)
    del view
    c = pool.empty((N,), np.float32)
    assert not np.shares_memory(b, c)
    assert pool.held_bytes == 2 * MIN_BYTES


def test_small_arrays_are_not_pooled_and_the_pool_is_bounded():
    pool = BufferPool(max_buffers=2)
    assert pool.empty((8,), np.float64).shape == (8,) and pool.held_bytes == 0
    kept = [pool.empty((N,), np.float32) for _ in range(4)]
    assert len({k.ctypes.data for k in kept}) == 4
    assert pool.held_bytes == 4 * MIN_BYTES  # all four in use: none is forgotten
    del kept[:3]
    bigger = pool.empty((3 * N,), np.float32)  # fits none: allocated, the free ones forgotten
    assert pool.held_bytes == 4 * MIN_BYTES  # kept[3] and bigger
    del bigger


def test_a_cycle_of_calls_longer_than_the_bound_reuses_every_buffer():
    # a loop of forwards, each call's arrays alive until the call after it has made its own
    pool = BufferPool(max_buffers=4)
    previous, buffers = [], []
    for _ in range(4):
        current = [pool.empty((N,), np.float32) for _ in range(6)]
        buffers.append([weakref.ref(a.base) for a in current])
        previous = current  # noqa: F841 (alive while the next call makes its arrays)
    del previous, current
    bases = [{id(ref()) for ref in call} for call in buffers]
    assert all(ref() is not None for call in buffers for ref in call)
    assert bases[2] == bases[0] and bases[3] == bases[1] and not bases[0] & bases[1]
    assert pool.held_bytes == 12 * MIN_BYTES


def test_the_smallest_free_buffer_that_fits_is_used():
    pool = BufferPool()
    big, small = pool.empty((2 * N,), np.float32), pool.empty((N,), np.float32)
    big_at, small_at = big.ctypes.data, small.ctypes.data
    del big, small
    assert pool.empty((N,), np.float32).ctypes.data == small_at
    assert pool.empty((2 * N,), np.float32).ctypes.data == big_at


def test_a_buffer_serves_only_requests_of_at_least_half_its_size():
    pool = BufferPool()
    big = pool.empty((4 * N,), np.float32)
    big_at = big.ctypes.data
    del big
    assert pool.empty((N,), np.float32).ctypes.data != big_at  # would waste 3/4 of it
    assert pool.empty((3 * N,), np.float32).ctypes.data == big_at


def test_every_array_starts_on_a_cache_line():
    pool = BufferPool()
    arrays = [pool.empty(shape, dtype) for shape, dtype in
              (((N,), np.float32), ((3, N), np.float64), ((5, 7), np.float32), ((1,), np.uint8))]
    arrays += [aligned_zeros((13, 3), np.float64), aligned_copy(np.arange(12.0).reshape(3, 4).T)]
    assert all(a.ctypes.data % ALIGN == 0 for a in arrays)
    assert arrays[4].shape == (13, 3) and not arrays[4].any()
    np.testing.assert_array_equal(arrays[5], np.arange(12.0).reshape(3, 4).T)
    assert arrays[5].flags.c_contiguous
