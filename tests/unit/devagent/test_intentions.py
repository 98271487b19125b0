"""Intentions as rules: Consul's precedence, the decision authorize answers with, and the validation of
writes, driven directly on the pure store."""

from __future__ import annotations

import pytest

from meshlet.devagent.intentions import (
    DEFAULT_REASON,
    Intention,
    IntentionError,
    Intentions,
    decide,
    in_precedence_order,
    match,
    multierror,
    parse_name,
    precedence,
)
from meshlet.devagent.raft import RaftIndex

L7_ALLOW = {"Action": "allow", "HTTP": {"PathPrefix": "/"}}


def rule(source: str, destination: str, action: str = "allow", **fields: object) -> Intention:
    return Intention(source=source, destination=destination, action=action, **fields)  # type: ignore[arg-type]


def store() -> Intentions:
    return Intentions(RaftIndex())


# ------------------------------------------------------------------------------------------ precedence


@pytest.mark.parametrize(
    ("source", "destination", "expected"),
    [("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)],
)
def test_precedence_follows_consuls_table(source: str, destination: str, expected: int) -> None:
    assert precedence(source, destination) == expected


def test_more_specific_intentions_are_evaluated_first() -> None:
    rules = [rule("*", "*"), rule("web", "*"), rule("*", "db"), rule("web", "db")]
    assert [(i.source, i.destination) for i in in_precedence_order(rules)] == [
        ("web", "db"),
        ("*", "db"),
        ("web", "*"),
        ("*", "*"),
    ]


def test_equal_precedence_is_ordered_by_name() -> None:
    ordered = in_precedence_order([rule("web", "db"), rule("api", "db"), rule("web", "cache")])
    assert [(i.source, i.destination) for i in ordered] == [("api", "db"), ("web", "cache"), ("web", "db")]


def test_match_includes_wildcards_on_the_matched_side_only() -> None:
    rules = [rule("web", "db"), rule("*", "db"), rule("web", "*"), rule("api", "cache")]
    by_destination = match(rules, "destination", "db")
    assert [(i.source, i.destination) for i in by_destination] == [("web", "db"), ("*", "db"), ("web", "*")]
    by_source = match(rules, "source", "web")
    assert [(i.source, i.destination) for i in by_source] == [("web", "db"), ("*", "db"), ("web", "*")]
    assert match(rules, "source", "api") == [rules[3], rules[1]]


# ------------------------------------------------------------------------------------------ decisions


def test_no_intention_allows_by_default_as_with_acls_off() -> None:
    decision = decide([], "web", "db")
    assert decision.allowed is True
    assert decision.reason == DEFAULT_REASON
    assert decision.intention is None


def test_exact_deny_beats_a_wildcard_allow() -> None:
    decision = decide([rule("*", "db", "allow"), rule("web", "db", "deny")], "web", "db")
    assert decision.allowed is False
    assert decision.reason == "Matched L4 intention: default/web => default/db (Precedence: 9, Action: DENY)"


def test_wildcard_deny_applies_to_sources_without_their_own_intention() -> None:
    rules = [rule("*", "db", "deny"), rule("web", "db", "allow")]
    assert decide(rules, "web", "db").allowed is True
    other = decide(rules, "batch", "db")
    assert other.allowed is False
    assert "default/* => default/db (Precedence: 8, Action: DENY)" in other.reason


def test_a_destination_wildcard_ranks_below_a_source_wildcard() -> None:
    rules = [rule("web", "*", "deny"), rule("*", "db", "allow")]
    assert decide(rules, "web", "db").allowed is True
    assert decide(rules, "web", "cache").allowed is False


def test_an_l7_intention_denies_at_connect_time() -> None:
    decision = decide([rule("web", "db", "", permissions=(L7_ALLOW,))], "web", "db")
    assert decision.allowed is False
    assert decision.reason == "Matched L7 intention: default/web => default/db (Precedence: 9, Permissions: 1)"


def test_a_caller_from_another_namespace_matches_no_intention() -> None:
    decision = decide([rule("web", "db", "deny")], "web", "db", source_namespace="team-a")
    assert decision.allowed is True
    assert decision.reason == DEFAULT_REASON


def test_a_legacy_intention_is_quoted_with_its_id() -> None:
    legacy = rule("web", "db", "deny", legacy_id="5e5c2b3a-0000-4000-8000-000000000001")
    assert legacy.describe() == (
        "default/web => default/db (ID: 5e5c2b3a-0000-4000-8000-000000000001, Precedence: 9, Action: DENY)"
    )


# ------------------------------------------------------------------------------------------ names


def test_names_may_carry_a_namespace_and_partition_which_ce_ignores() -> None:
    assert parse_name("web") == "web"
    assert parse_name("default/web") == "web"
    assert parse_name("part/default/web") == "web"


@pytest.mark.parametrize(
    ("text", "allow_peer", "message"),
    [
        ("a/b/c/d", False, "input can contain at most two '/'"),
        ("peer:other/web", False, "cannot specify a peer here"),
        ("peer:other", True, "need to specify the service name as well"),
    ],
)
def test_bad_names_are_refused_with_consuls_text(text: str, allow_peer: bool, message: str) -> None:
    with pytest.raises(IntentionError, match=f"^{message}$"):
        parse_name(text, allow_peer=allow_peer)


# ------------------------------------------------------------------------------------------ the store


def test_upsert_creates_then_replaces_and_every_write_takes_an_index() -> None:
    s = store()
    first = s.upsert("web", "db", action="allow", description="first")
    second = s.upsert("web", "db", action="deny")
    assert second.create_index == first.create_index
    assert second.modify_index > first.modify_index
    assert s.get("web", "db") == second
    assert s.modify_index == second.modify_index
    assert second.to_json()["Description"] == ""


def test_sources_of_one_destination_share_its_indexes_as_consuls_config_entry_does() -> None:
    s = store()
    web = s.upsert("web", "db", action="allow")
    api = s.upsert("api", "db", action="deny")
    assert s.get("web", "db") == Intention(
        "web", "db", "allow", create_index=web.create_index, modify_index=api.modify_index
    )
    assert api.create_index == web.create_index


def test_deleting_a_missing_intention_is_a_no_op_that_writes_nothing() -> None:
    s = store()
    s.upsert("web", "db", action="allow")
    before = s.modify_index
    s.delete("api", "db")
    s.delete("web", "nowhere")
    assert s.modify_index == before
    s.delete("web", "db")
    assert s.modify_index > before
    assert s.all() == []


def test_deleting_the_last_source_then_recreating_starts_a_new_entry() -> None:
    s = store()
    first = s.upsert("web", "db", action="allow")
    s.delete("web", "db")
    again = s.upsert("web", "db", action="allow")
    assert again.create_index > first.create_index


@pytest.mark.parametrize(
    ("source", "destination", "fields", "message"),
    [
        ("web", "db", {}, "Sources[0].Action must be set to 'allow' or 'deny'"),
        ("web", "db", {"action": "permit"}, "Sources[0].Action must be set to 'allow' or 'deny'"),
        (
            "web",
            "db",
            {"action": "allow", "permissions": [L7_ALLOW]},
            "Sources[0].Action must be omitted if Permissions are specified",
        ),
        (
            "web",
            "*",
            {"permissions": [L7_ALLOW]},
            "Sources[0].Permissions cannot be specified on intentions with wildcarded destinations",
        ),
        ("web", "db", {"action": "allow", "source_type": "external"}, "Sources[0].Type must be set to 'consul'"),
        (
            "we*",
            "db",
            {"action": "allow"},
            "Sources[0].Name: wildcard character '*' cannot be used with partial values",
        ),
        ("web", "d*", {"action": "allow"}, "Name: wildcard character '*' cannot be used with partial values"),
        (
            "web",
            "db",
            {"action": "allow", "description": "x" * 513},
            "Sources[0].Description exceeds maximum length 512",
        ),
        ("web", "db", {"action": "allow", "meta": {"team": "a"}}, "Meta must not be specified"),
        (
            "web",
            "db",
            {"permissions": [{"HTTP": {"PathPrefix": "/"}}]},
            "Sources[0].Permissions[0].Action must be set to 'allow' or 'deny'",
        ),
        ("web", "db", {"permissions": [{"Action": "deny"}]}, "Sources[0].Permissions[0].HTTP is required"),
        (
            "web",
            "db",
            {"permissions": [{"Action": "deny", "HTTP": {}}]},
            "Sources[0].Permissions[0].HTTP should not be empty",
        ),
        (
            "web",
            "db",
            {"permissions": [{"Action": "deny", "HTTP": {"PathExact": "x"}}]},
            "Sources[0].Permissions[0].HTTP.PathExact doesn't start with '/': \"x\"",
        ),
    ],
)
def test_invalid_upserts_are_refused_with_consuls_text(
    source: str, destination: str, fields: dict[str, object], message: str
) -> None:
    s = store()
    with pytest.raises(IntentionError) as refused:
        s.upsert(source, destination, **fields)  # type: ignore[arg-type]
    assert str(refused.value) == message
    assert s.all() == []
    assert s.modify_index == 0


def test_a_second_source_is_named_by_its_position_in_the_destinations_entry() -> None:
    s = store()
    s.upsert("web", "db", action="allow")
    with pytest.raises(IntentionError, match=r"^Sources\[1\]\.Action must be set"):
        s.upsert("api", "db")
    with pytest.raises(
        IntentionError, match=r"^Meta must not be specified, or should be unchanged during an update\.$"
    ):
        s.upsert("api", "db", action="allow", meta={"k": "v"})


# ------------------------------------------------------------------------------------------ legacy writes


def test_a_legacy_create_keeps_its_id_meta_and_timestamps() -> None:
    s = store()
    created = s.create_legacy(
        "id-1", "2025-01-01T00:00:00Z", source="web", destination="db", action="allow", meta={"team": "a"}
    )
    rendered = created.to_json()
    assert rendered["ID"] == "id-1"
    assert rendered["Meta"] == {"team": "a"}
    assert rendered["CreatedAt"] == rendered["UpdatedAt"] == "2025-01-01T00:00:00Z"


def test_legacy_validation_reports_every_problem_in_go_multierror_format() -> None:
    with pytest.raises(IntentionError) as refused:
        store().create_legacy("id-1", "t", source="", destination="db", source_type="other")
    assert str(refused.value) == multierror(
        ["SourceName must be set", "Action must be set to 'allow' or 'deny'", "SourceType must be set to 'consul'"]
    )
    assert str(refused.value).startswith("3 errors occurred:\n\t* SourceName must be set\n\t* ")
    assert multierror(["one"]) == "1 error occurred:\n\t* one\n\n"


def test_a_duplicate_legacy_create_is_refused() -> None:
    s = store()
    s.create_legacy("id-1", "t", source="web", destination="db", action="allow")
    with pytest.raises(IntentionError, match=r'^Sources\[1\] defines "web" more than once$'):
        s.create_legacy("id-2", "t", source="web", destination="db", action="deny")


def test_the_legacy_api_cannot_edit_a_destination_written_through_the_new_api() -> None:
    s = store()
    s.upsert("web", "db", action="allow")
    with pytest.raises(
        IntentionError, match=r'^cannot use legacy intention API to edit intentions with a destination of "db"'
    ):
        s.create_legacy("id-1", "t", source="api", destination="db", action="allow")


def test_a_new_style_write_drops_the_legacy_ids_of_its_destination() -> None:
    s = store()
    s.create_legacy("id-1", "t", source="web", destination="db", action="allow")
    s.upsert("api", "db", action="deny")
    web = s.get("web", "db")
    assert web is not None
    assert "ID" not in web.to_json()


def test_a_new_style_write_refuses_to_drop_legacy_meta() -> None:
    s = store()
    s.create_legacy("id-1", "t", source="web", destination="db", action="allow", meta={"team": "a"})
    with pytest.raises(IntentionError, match=r"^Sources\[0\]\.LegacyMeta must be omitted$"):
        s.upsert("api", "db", action="deny")


# ------------------------------------------------------------------------------------------ persistence


def test_snapshot_and_restore_round_trip() -> None:
    s = store()
    s.upsert("web", "db", action="allow", description="d")
    s.upsert("api", "db", permissions=[L7_ALLOW])
    s.create_legacy("id-1", "t", source="*", destination="cache", action="deny", meta={"k": "v"})
    restored = Intentions(RaftIndex())
    restored.restore(s.snapshot())
    assert restored.all() == s.all()
    assert restored.modify_index == s.modify_index
    assert restored.decide("api", "db").allowed is False
