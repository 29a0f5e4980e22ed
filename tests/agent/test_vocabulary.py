"""protocol/vocabulary.py: the words the plane and the agent share, and the rules on names they
both hold a VM name or a PCI address to."""

import pytest

from protocol import vocabulary as v


def test_a_vm_that_ended_is_a_replica_that_is_over():
    assert set(v.VM_ENDED_STATES) <= set(v.TERMINAL_STATES)
    assert set(v.TERMINAL_STATES) - set(v.VM_ENDED_STATES) == {v.LOST}  # the plane's verdict alone
    assert set(v.VM_STATES) <= set(v.REPLICA_STATES) and set(v.VM_ENDED_STATES) <= set(v.VM_STATES)


def test_live_deployments_and_managers_are_subsets():
    assert set(v.LIVE_STATUSES) <= set(v.DEPLOYMENT_STATUSES)
    assert set(v.MANAGER_ROLES) <= set(v.ROLES) and v.MEMBER not in v.MANAGER_ROLES


def test_no_set_repeats_a_word():
    for values in (v.REPLICA_STATES, v.DESIRED_STATES, v.DEPLOYMENT_STATUSES, v.NODE_STATUSES, v.ROLES, v.LOG_STREAMS):
        assert len(set(values)) == len(values)


@pytest.mark.parametrize(("name", "ok"), [
    ("a" * 63, True), ("a" * 64, False), ("0", True), ("vm-a", True), ("web_1.v2", True),
    ("", False), ("Web", False), ("-web", False), (".web", False), ("we b", False), ('bad"name', False),
    ("a:b", False), ("web\n", False), (None, False), (7, False),
])
def test_the_vm_name_rule(name, ok):
    assert v.is_vm_name(name) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("0000:18:00.0", True), ("0001:af:1f.7", True), ("0000:18:00.8", False), ("0000:AF:00.0", False),
    ("18:00.0", False), ("0000:18:00.0\n", False), (None, False),
])
def test_the_pci_address_rule(text, ok):
    assert v.is_pci_address(text) is ok


def test_choices_name_each_member_after_its_value():
    assert v.choices((v.RUN, v.STOP)) == {"RUN": "run", "STOP": "stop"}
