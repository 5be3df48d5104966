"""make bench's counts of Temporal Cloud's billable actions (bench/billable_actions.py), on
histories the release recorded and on events built to show each rule of the definition."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from temporalio.api.common.v1 import Payload, SearchAttributes
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    UpsertWorkflowSearchAttributesEventAttributes,
)
from temporalio.client import WorkflowHistory

from bench.billable_actions import billable_actions, workflow_tasks

HISTORIES = Path(__file__).parent / "histories" / "1.0.0"


def recorded(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())


def test_an_invoiced_order_refused_a_cancellation_counts_each_kind_once_per_definition() -> None:
    # The order's own run: placed (update-with-start, the reservation's local activity), the
    # expiry timer, dispatched, four steps, the invoice and tracking sent, the parcel followed in a
    # child, a refused cancellation that sends both again, the late-call timer.
    assert billable_actions(recorded("invoiced_then_refused")) == Counter(
        {
            "workflow started": 1,
            "update": 3,
            "markers (a workflow task's)": 1,
            "search attributes upserted": 7,
            "timer started": 2,
            "activity attempt": 8,
            # The child's start is its own history's: its execution is the parent's to count.
            "child workflow execution": 1,
        }
    )
    assert workflow_tasks(recorded("invoiced_then_refused")) == 14


def test_a_signal_with_start_is_one_action() -> None:
    # The SKU's change notifications: started with the first change's signal, then its burst.
    history = recorded("sku_changes_burst")
    signals = sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    actions = billable_actions(history)
    assert history.events[1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    assert actions["workflow started"] == 1
    assert actions["signal"] == signals - 1


def test_the_parcels_run_counts_its_polls_posts_and_timer() -> None:
    assert billable_actions(recorded("invoiced_then_refused.parcel")) == Counter(
        {"workflow started": 1, "activity attempt": 4, "timer started": 1}
    )


def event(kind: EventType.ValueType, **attributes: object) -> HistoryEvent:
    return HistoryEvent(event_type=kind, **attributes)  # type: ignore[arg-type]


def test_retries_markers_and_the_change_version_follow_the_definition() -> None:
    marker = EventType.EVENT_TYPE_MARKER_RECORDED
    history = WorkflowHistory(
        "made",
        [
            event(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
            # An activity on its third attempt: each attempt is an action.
            event(
                EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
                activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(
                    attempt=3
                ),
            ),
            # Two local activities' markers in one workflow task, one in another: two actions.
            *(
                event(
                    marker,
                    marker_recorded_event_attributes=MarkerRecordedEventAttributes(
                        marker_name="core_local_activity", workflow_task_completed_event_id=task
                    ),
                )
                for task in (4, 4, 9)
            ),
            # Setting only TemporalChangeVersion (a patch) is free; any other attribute is not.
            event(
                EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
                upsert_workflow_search_attributes_event_attributes=(
                    UpsertWorkflowSearchAttributesEventAttributes(
                        search_attributes=SearchAttributes(
                            indexed_fields={"TemporalChangeVersion": Payload(data=b"[]")}
                        )
                    )
                ),
            ),
            event(
                EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
                upsert_workflow_search_attributes_event_attributes=(
                    UpsertWorkflowSearchAttributesEventAttributes(
                        search_attributes=SearchAttributes(
                            indexed_fields={
                                "TemporalChangeVersion": Payload(data=b"[]"),
                                "OrderStatus": Payload(data=b'"placed"'),
                            }
                        )
                    )
                ),
            ),
            event(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, event_id=8),
            event(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        ],
    )
    assert billable_actions(history) == Counter(
        {
            "workflow started": 1,
            "activity attempt": 3,
            "markers (a workflow task's)": 2,
            "search attributes upserted": 1,
            "signal": 1,
        }
    )
    assert workflow_tasks(history) == 1
