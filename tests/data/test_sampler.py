import numpy as np
import pytest

from lmforge.data.sampler import ChunkSampler, eval_batches
from lmforge.errors import DataError


def stream(n, start=0):
    return np.arange(start, start + n, dtype=np.uint16)


def test_windows_cover_every_target_once_per_epoch():
    arrays = [stream(101), stream(57, start=1000)]
    s = ChunkSampler(arrays, seq_len=10, batch_size=3, seed=7)
    # (101-1)//10 = 10 windows + (57-1)//10 = 5 windows = 15 -> 5 batches
    assert s.batches_per_epoch == 5
    rows = np.concatenate([s.next_batch() for _ in range(5)])
    assert rows.shape == (15, 11) and rows.dtype == np.int64
    # inputs and targets are shifted by one within each window
    assert (rows[:, 1:] - rows[:, :-1] == 1).all()
    targets = np.sort(rows[:, 1:].ravel())
    expected = np.concatenate([np.arange(1, 101), np.arange(1001, 1051)])
    np.testing.assert_array_equal(targets, expected)


def test_epochs_reshuffle_deterministically():
    a = ChunkSampler([stream(1000)], seq_len=8, batch_size=4, seed=3)
    b = ChunkSampler([stream(1000)], seq_len=8, batch_size=4, seed=3)
    n = a.batches_per_epoch
    first = [a.next_batch() for _ in range(2 * n)]
    second = [b.next_batch() for _ in range(2 * n)]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert a.epoch == 1
    epoch0 = np.concatenate(first[:n])[:, 0]
    epoch1 = np.concatenate(first[n:])[:, 0]
    assert sorted(epoch0) == sorted(epoch1) and list(epoch0) != list(epoch1)
    c = ChunkSampler([stream(1000)], seq_len=8, batch_size=4, seed=4)
    assert not np.array_equal(c.next_batch(), first[0])


def test_state_dict_resume_is_exact():
    full = ChunkSampler([stream(500)], seq_len=5, batch_size=4, seed=11)
    straight = [full.next_batch() for _ in range(60)]  # crosses several epochs
    part = ChunkSampler([stream(500)], seq_len=5, batch_size=4, seed=11)
    for _ in range(37):
        part.next_batch()
    state = part.state_dict()
    resumed = ChunkSampler([stream(500)], seq_len=5, batch_size=4, seed=11)
    resumed.load_state_dict(dict(state))
    for i in range(37, 60):
        np.testing.assert_array_equal(resumed.next_batch(), straight[i])


def test_ranks_partition_the_windows():
    arrays = [stream(801)]
    seen = []
    for rank in range(2):
        s = ChunkSampler(arrays, seq_len=4, batch_size=5, seed=0, rank=rank, world_size=2)
        seen.append({tuple(r) for _ in range(s.batches_per_epoch) for r in s.next_batch()})
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 100


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="too little data"):
        ChunkSampler([stream(20)], seq_len=8, batch_size=4)


def test_resume_with_another_seed_is_refused():
    s = ChunkSampler([stream(100)], seq_len=4, batch_size=2, seed=1)
    with pytest.raises(DataError, match="seed"):
        s.load_state_dict({"epoch": 0, "position": 3, "seed": 2})


def test_eval_batches_are_fixed_and_in_order():
    arrays = [stream(95)]
    batches = list(eval_batches(arrays, seq_len=10, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 1]
    np.testing.assert_array_equal(batches[0][0], np.arange(11))
    np.testing.assert_array_equal(batches[2][0], np.arange(80, 91))
    assert len(list(eval_batches(arrays, 10, 4, max_batches=1))) == 1


# -- several processes: rank r's slice of each step's global batch ------------------------


def test_world_size_one_draws_the_batches_it_always_drew():
    # first window start of each row, as the single-process sampler drew them before
    # the multi-process rule (20 steps: one epoch of 16 and the start of the next)
    before = [[116, 24, 156], [192, 68, 120], [128, 104, 92], [36, 132, 88], [48, 124, 8],
              [72, 144, 168], [164, 136, 108], [28, 112, 172], [176, 80, 44], [52, 76, 152],
              [140, 96, 100], [12, 32, 196], [84, 4, 64], [188, 56, 16], [20, 60, 40],
              [180, 0, 148], [196, 136, 128], [156, 180, 24], [76, 48, 160], [188, 56, 100]]
    s = ChunkSampler([stream(203)], seq_len=4, batch_size=3, seed=5)
    assert s.batches_per_epoch == 16
    assert [s.next_batch()[:, 0].tolist() for _ in range(20)] == before


def test_ranks_batches_together_are_the_single_process_global_batch():
    arrays = [stream(403), stream(150, start=1000)]
    B, W = 3, 2
    one = ChunkSampler(arrays, seq_len=4, batch_size=B * W, seed=9)
    ranks = [ChunkSampler(arrays, seq_len=4, batch_size=B, seed=9, rank=r, world_size=W)
             for r in range(W)]
    assert all(s.batches_per_epoch == one.batches_per_epoch == 137 // 6 for s in ranks)
    for _ in range(2 * one.batches_per_epoch + 3):  # across two epoch boundaries
        parts = [s.next_batch() for s in ranks]
        np.testing.assert_array_equal(np.concatenate(parts), one.next_batch())
        assert all(s.state_dict() == ranks[0].state_dict() for s in ranks)


def test_resume_on_another_world_size_with_the_same_global_batch():
    arrays = [stream(803)]
    two = [ChunkSampler(arrays, seq_len=4, batch_size=4, seed=2, rank=r, world_size=2)
           for r in range(2)]
    for _ in range(45):  # past the first epoch (200 windows / 8 = 25 steps)
        for s in two:
            s.next_batch()
    state = two[0].state_dict()
    assert state["world_size"] == 2 and state["global_batch"] == 8
    four = [ChunkSampler(arrays, seq_len=4, batch_size=2, seed=2, rank=r, world_size=4)
            for r in range(4)]
    one = ChunkSampler(arrays, seq_len=4, batch_size=8, seed=2)
    for s in [*four, one]:
        s.load_state_dict(dict(state))
    for _ in range(10):
        want = np.concatenate([s.next_batch() for s in two])
        np.testing.assert_array_equal(np.concatenate([s.next_batch() for s in four]), want)
        np.testing.assert_array_equal(one.next_batch(), want)


def test_resume_with_another_global_batch_is_refused():
    state = ChunkSampler([stream(803)], seq_len=4, batch_size=4, seed=2, rank=1,
                         world_size=2).state_dict()
    s = ChunkSampler([stream(803)], seq_len=4, batch_size=4, seed=2)
    with pytest.raises(DataError, match=r"global batch of 8 windows \(4 x 2 processes\), "
                                        r"this run's is 4 \(4 x 1\)"):
        s.load_state_dict(state)


def test_a_state_saved_before_world_sizes_still_resumes():
    s = ChunkSampler([stream(500)], seq_len=5, batch_size=4, seed=11)
    s.load_state_dict({"epoch": 1, "position": 3, "seed": 11})
    assert (s.epoch, s.position) == (1, 3)


def test_rank_outside_the_world_is_refused():
    with pytest.raises(DataError, match="rank 2"):
        ChunkSampler([stream(500)], seq_len=5, batch_size=4, rank=2, world_size=2)
