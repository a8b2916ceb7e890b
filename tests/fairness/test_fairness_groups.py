from kakumei.fairness.groups import GroupPolicy, group_key, is_network_group, network_of


def test_addresses_in_one_network_share_a_group_and_neighbours_do_not() -> None:
    assert network_of("203.0.113.7") == network_of("203.0.113.250") == "203.0.113.0/24"
    assert network_of("203.0.114.7") != network_of("203.0.113.7")
    assert network_of("2001:db8:1:ff::1") == network_of("2001:db8:1:0::2") == "2001:db8:1::/56"
    assert network_of("2001:db8:1:100::1") != network_of("2001:db8:1::1")


def test_an_ipv4_mapped_address_is_its_ipv4_network() -> None:
    assert network_of("::ffff:203.0.113.9") == "203.0.113.0/24"


def test_no_or_odd_address_has_no_network() -> None:
    assert network_of(None) is None
    assert network_of("") is None
    assert network_of("testclient") is None


def test_prefixes_follow_the_policy() -> None:
    wide = GroupPolicy(v4_prefix=16, v6_prefix=48)
    assert network_of("10.1.200.3", wide) == "10.1.0.0/16"
    assert network_of("2001:db8:1:ff::1", wide) == "2001:db8:1::/48"


def test_merit_stands_alone_and_the_rest_groups_by_network() -> None:
    assert group_key(7, "203.0.113.7", stands_alone=False) == "net:203.0.113.0/24"
    assert is_network_group(group_key(7, "203.0.113.7", stands_alone=False))
    assert group_key(7, "203.0.113.7", stands_alone=True) == "user:7"
    assert group_key(7, None, stands_alone=False) == "user:7"
    assert group_key(7, "203.0.113.7", stands_alone=False, policy=GroupPolicy(enabled=False)) == "user:7"
