import numpy as np

from components.statistics import near_duplicates


def test_hashes_within_the_distance_are_one_group_and_chains_join():
    base = 0x0F0F_0F0F_0F0F_0F0F
    hashes = [base, base ^ 0b111, base ^ (0b1111 << 8), ~base, None]
    labels = near_duplicates.component_labels(hashes, max_distance=3)
    # 0-1 differ in 3 bits; 2 is 4 bits from 0 and 7 from 1; ~base differs everywhere; None has no hash.
    assert labels[0] == labels[1]
    assert labels[2] != labels[0] and labels[3] != labels[0] and labels[4] not in labels[:4]
    chained = near_duplicates.component_labels([base, base ^ 0b111, base ^ 0b111_111], max_distance=3)
    assert len(set(chained)) == 1  # 0-2 are 6 bits apart, joined through 1


def test_a_group_key_links_images_whatever_their_pixels():
    labels = near_duplicates.component_labels([1, -1, 12345, None], 2, keys=['a', None, 'a', 'a'])
    assert labels[0] == labels[2] == labels[3] != labels[1]


def test_groups_across_splits_are_counted_with_an_example_pair():
    far = [0, -1, 0x5555_5555_5555_5555, 0x3333_3333_3333_3333]
    names = ['a.jpg', 'a-copy.jpg', 'b.jpg', 'b-copy.jpg', 'c.jpg', 'c2.jpg', 'lone.jpg']
    hashes = [far[0], far[0] ^ 1, far[1], far[1], far[2], far[2] ^ 3, far[3]]
    splits = ['train', 'test', 'test', 'train', 'eval', 'eval', 'test']
    groups = near_duplicates.split_groups(names, splits, hashes, max_distance=2)
    assert groups.within == {'eval': (1, 2)}
    assert groups.across == [(('test', 'train'), 2, ('a-copy.jpg', 'a.jpg'))]


def test_bits_are_the_hash_most_significant_first():
    bits = near_duplicates._bits([1, -1])
    assert bits.shape == (2, 64) and bits[0].sum() == 1 and bits[0][-1] and bits[1].all()
    assert np.array_equal(near_duplicates._bits([1 << 62])[0][:3], [False, True, False])
