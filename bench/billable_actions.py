"""Temporal Cloud's billable actions, counted from a workflow's history.

The definition is Temporal's own, "Temporal Cloud Actions" (https://docs.temporal.io/cloud/actions,
the documentation repository's docs/evaluate/temporal-cloud/actions.mdx), as read on 2026-12-07:

- a workflow started (client start, continue-as-new, child start): 1 (WORKFLOW_EXECUTION_STARTED);
- a signal-with-start: 1 in all, whether or not it started the workflow (a run whose second event
  is the signal it was started with counts that signal in its start);
- a timer started, the SDK's implicit ones included (`wait_condition(timeout=...)`): 1;
- a search-attribute upsert: 1 per UpsertSearchAttributes command, however many attributes it
  carries; those given at the start are free, and so is one that sets only TemporalChangeVersion;
- a signal: 1 each (counted here where it is received: WORKFLOW_EXECUTION_SIGNALED);
- an update received by the worker: 1 each, update-with-start's included and on top of the start
  (WORKFLOW_EXECUTION_UPDATE_ACCEPTED; a rejected update also costs 1 but leaves no event);
- an activity started or retried: 1 per attempt (ACTIVITY_TASK_STARTED carries the last
  attempt's number);
- markers: every marker a workflow task records (local activities' results, patches) counts once
  for that task (MARKER_RECORDED grouped by the task that recorded them);
- a child workflow: 2, its start and its execution; the start is the child's own
  WORKFLOW_EXECUTION_STARTED, so the parent's START_CHILD_WORKFLOW_EXECUTION_INITIATED counts the
  execution's 1 (count the child's history beside the parent's, as bench/whole_orders.py does);
- workflow execution options updated: 1.

Not in a history, so not counted here: queries (the Temporal UI's call stack is one), activity
heartbeats that reach the server, rejected updates, workflow-task heartbeats during a long local
activity (each one more action), exports, schedules; nor a signal sent to a workflow outside the
histories counted. A happy-path order as
the marketplace drives it sends none of them: its steps answer before a heartbeat is due, and
only a person's GET /pvt/orders/{orderId} queries the order (1 action each read).
"""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

CHANGE_VERSION = "TemporalChangeVersion"

_ONE_EACH = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow started",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer started",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED: "options updated",
}


def billable_actions(history: WorkflowHistory) -> Counter[str]:
    """The actions one run's history records, by kind."""
    actions: Counter[str] = Counter()
    tasks_with_markers: set[int] = set()
    for event in history.events:
        kind = event.event_type
        if kind in _ONE_EACH:
            actions[_ONE_EACH[kind]] += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            # The signal of a signal-with-start comes right after the start, and is in its action.
            if event.event_id != 2:
                actions["signal"] += 1
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            if set(fields.indexed_fields) - {CHANGE_VERSION}:
                actions["search attributes upserted"] += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            actions["activity attempt"] += max(
                1, event.activity_task_started_event_attributes.attempt
            )
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            task = event.marker_recorded_event_attributes.workflow_task_completed_event_id
            if task not in tasks_with_markers:
                tasks_with_markers.add(task)
                actions["markers (a workflow task's)"] += 1
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            actions["child workflow execution"] += 1
    return actions


def workflow_tasks(history: WorkflowHistory) -> int:
    """The workflow tasks the history records as completed."""
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
