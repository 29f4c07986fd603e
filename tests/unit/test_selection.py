import pytest

from matrix_synapse_workers.core.errors import SelectionError
from matrix_synapse_workers.core.selection import parse_workers, select


def test_issue_example():
    assert parse_workers("sync:4,federation_sender:2,events:2,background") == {
        "sync": 4, "federation_sender": 2, "events": 2, "background": 1}


def test_spaces_hyphens_and_empty_items_are_tolerated():
    assert parse_workers(" sync : 2 , federation-reader,, ") == {"sync": 2, "federation_reader": 1}


def test_preset_then_explicit_counts_win():
    assert select(preset="small", workers="sync:3,typing").counts == {"sync": 3, "client": 1, "typing": 1}


def test_counts_come_out_in_catalog_order():
    assert list(select(workers="typing,sync").counts) == ["sync", "typing"]


@pytest.mark.parametrize("spec,fragments", [
    ("bogus", ["'bogus'", "accepted:", "sync", "quarantined_media"]),
    ("typing:2", ["'typing'", "only once", "2", "types that scale"]),
    ("sync:0", ["count 0", "'sync'", ">= 1"]),
    ("sync:-3", ["'-3'", "sync:N"]),
    ("sync:x", ["'x'", "sync:N"]),
    ("sync:1.5", ["'1.5'"]),
    ("sync:2,sync:3", ["'sync'", "twice"]),
    ("sync,federation-reader,federation_reader:2", ["'federation_reader'", "twice"]),
])
def test_bad_specs_name_the_value_and_what_is_accepted(spec, fragments):
    with pytest.raises(SelectionError) as caught:
        parse_workers(spec)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_unknown_preset():
    with pytest.raises(SelectionError, match=r"unknown preset 'huge'; accepted: auto, minimal, small"):
        select(preset="huge")


def test_nothing_chosen_is_an_error():
    with pytest.raises(SelectionError, match="no workers chosen"):
        select(workers=" , ")


def test_auto_is_sized_from_this_machine():
    from matrix_synapse_workers.core.sizing import sized_counts
    from matrix_synapse_workers.system.machine import this_machine
    cores, memory = this_machine()
    assert cores >= 1 and memory > 0
    assert select(preset="auto", machine=(cores, memory)).counts == sized_counts(cores, memory)


def test_auto_without_the_machine_is_refused():
    """Choosing stays pure: the machine's size comes from the caller, never read here."""
    with pytest.raises(SelectionError, match="auto"):
        select(preset="auto")
