from __future__ import annotations

import pytest

from shared import topics
from shared.errors import InvalidInput
from shared.ids import check_id, new_id


def test_topic_helpers_and_parse_round_trip() -> None:
    assert topics.appliance_status("edge-a") == "nearcast/v1/appliances/edge-a/status"
    assert topics.parse(topics.appliance_telemetry("edge-a")) == topics.ParsedTopic("edge-a", "telemetry")
    assert topics.parse(topics.appliance_desired("edge-a", "model")) == topics.ParsedTopic("edge-a", "desired", "model")
    assert topics.appliance_inbox("e1") == ["nearcast/v1/appliances/e1/commands", "nearcast/v1/appliances/e1/desired/+"]


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 65, "..", ".hidden", "a\x00", "é", "a b"])
def test_ids_cannot_smuggle_wildcards_or_separators(bad: str) -> None:
    with pytest.raises(InvalidInput):
        topics.appliance_commands(bad)
    with pytest.raises(InvalidInput):
        check_id(bad)


@pytest.mark.parametrize("topic", ["nearcast/v1/appliances/a/other", "nearcast/v2/appliances/a/status",
                                   "nearcast/v1/appliances/a/desired/nope", "nearcast/v1/appliances/+/status",
                                   "nearcast/v1/appliances/a/status/extra", "x"])
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(InvalidInput):
        topics.parse(topic)


def test_new_ids_are_valid_and_unique() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(check_id(i) for i in ids)


def test_acl_confines_appliances_to_their_own_topics() -> None:
    acl = topics.acl_rules("control")
    assert "user control\ntopic readwrite nearcast/v1/#" in acl
    assert "pattern write nearcast/v1/appliances/%u/telemetry" in acl
    assert "pattern read nearcast/v1/appliances/%u/commands" in acl
    assert "pattern read nearcast/v1/appliances/%u/desired/+" in acl
    assert "pattern write nearcast/v1/appliances/%u/commands" not in acl
