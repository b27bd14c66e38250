"""Weight fingerprints: exact integer sums, the same at any thread count."""

from __future__ import annotations

import torch

from diffloc.models.exact_sums import exact_sums


def test_sums_are_of_the_bit_patterns_16_bits_at_a_time():
    # float16 1.0 is 0x3C00; float32 1.0 is 0x3F800000, two pieces 0x0000 and 0x3F80; bfloat16 -2.0 is 0xC000
    assert exact_sums(torch.tensor([1.0], dtype=torch.float16)) == (0x3C00, 0x3C00**2)
    assert exact_sums(torch.tensor([1.0, 1.0], dtype=torch.float32)) == (2 * 0x3F80, 2 * 0x3F80**2)
    assert exact_sums(torch.tensor([-2.0], dtype=torch.bfloat16)) == (0xC000 - 0x10000, (0x10000 - 0xC000) ** 2)
    assert exact_sums(torch.tensor([True, False, True])) == (2, 2)


def test_sums_do_not_depend_on_order_or_threads_and_see_a_change_in_the_last_bit():
    values = torch.randn(1009 * 997, generator=torch.Generator().manual_seed(0))
    found = set()
    for threads in (1, 2):  # the suite's conftest gives the thread count back after the test
        torch.set_num_threads(threads)
        found |= {exact_sums(values), exact_sums(values.flip(0)), exact_sums(values.reshape(1009, -1).T)}
    assert len(found) == 1
    nudged = values.clone()
    nudged[12345] = torch.nextafter(nudged[12345], torch.tensor(float("inf")))
    assert exact_sums(nudged) != exact_sums(values)


def test_a_model_has_one_fingerprint_at_any_thread_count(tiny_sd1):
    prints = set()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        prints.add(tiny_sd1.fingerprint())
    assert len(prints) == 1
