"""A tenant's whole journey through the generated Python client (clients/python).

Creates a tenant, publishes one message and a batch, pages every message to the end (the last page
included), changes the tenant's concurrency and limits, reads its events and its state as of its creation,
exports its events, lists, replays and purges its dead-letter queue, and deletes it. Exits non-zero at the first step that does not do what the API promises.

    PYTHONPATH=clients/python TENANTMQ_URL=http://127.0.0.1:8080 TENANTMQ_TOKEN=$(target/debug/tenantmq token --admin) \
        python3 examples/python_journey.py

CI runs it through scripts/with-service.sh, which sets both variables.
"""

import json
import os
import sys
import time
import uuid

from tenantmq_client import AuthenticatedClient
from tenantmq_client.api.audit import export_tenant_events, get_tenant_state_as_of
from tenantmq_client.api.dead_letters import list_dead_letters, purge_dead_letters, replay_dead_letters
from tenantmq_client.api.events import list_tenant_events
from tenantmq_client.api.messages import list_messages, publish_message, publish_messages
from tenantmq_client.api.tenants import create_tenant, delete_tenant, get_tenant, set_concurrency, set_tenant_limits
from tenantmq_client.models import (
    CreateTenantRequest,
    DeadLetterPage,
    EventPage,
    LimitsSource,
    MessagePage,
    PublishBatchRequest,
    PublishRequest,
    Published,
    PublishedBatch,
    ReplayRequest,
    ReplayResult,
    SetConcurrencyRequest,
    SetLimitsRequest,
    Tenant,
    TenantDetails,
    TenantState,
)
from tenantmq_client.types import File

BATCH = 120
PAGE = 25


def expect(value, kind):
    """The parsed body, if the call answered what it should; otherwise stop with what it answered."""
    if not isinstance(value, kind):
        sys.exit(f"expected {kind.__name__}, got {value!r}")
    return value


def every_message(client, tenant):
    """Pages to the end, following next_cursor until it is null."""
    messages, cursor, pages = [], None, 0
    while True:
        page = expect(list_messages.sync(client=client, tenant_id=tenant, cursor=cursor, limit=PAGE), MessagePage)
        messages += page.data
        pages += 1
        if page.next_cursor is None:
            return messages, pages
        cursor = page.next_cursor


def main():
    client = AuthenticatedClient(base_url=os.environ["TENANTMQ_URL"], token=os.environ["TENANTMQ_TOKEN"])
    with client:
        tenant = expect(create_tenant.sync(client=client, body=CreateTenantRequest(name="journey", workers=2)), Tenant)
        print(f"created {tenant.id} ({tenant.queue})")

        one = expect(publish_message.sync(tenant.id, client=client, body=PublishRequest(payload={"n": 0})), Published)
        batch = PublishBatchRequest(messages=[PublishRequest(payload={"n": n}) for n in range(1, BATCH + 1)])
        many = expect(publish_messages.sync(tenant.id, client=client, body=batch), PublishedBatch)
        published = {str(one.id)} | {str(id) for id in many.ids}

        deadline = time.monotonic() + 60
        while True:
            messages, pages = every_message(client, tenant.id)
            if len(messages) == len(published) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        read = {str(message.id) for message in messages}
        if read != published or len(messages) != len(published):
            sys.exit(f"published {len(published)} messages, read {len(messages)} ({len(read & published)} of ours)")
        print(f"read all {len(messages)} messages back in {pages} pages")

        resized = expect(set_concurrency.sync(tenant.id, client=client, body=SetConcurrencyRequest(workers=4)), Tenant)
        details = expect(get_tenant.sync(tenant.id, client=client), TenantDetails)
        if resized.workers != 4 or details.workers != 4:
            sys.exit(f"workers are {resized.workers} / {details.workers}, not 4")
        print(f"concurrency 4; consumer {details.runtime.consumer_state}")

        limits = SetLimitsRequest(publish_rate=1000, max_queue_depth=50_000)
        limited = expect(set_tenant_limits.sync(tenant.id, client=client, body=limits), Tenant)
        if (limited.limits.publish_rate, limited.limits.source) != (1000, LimitsSource.TENANT):
            sys.exit(f"limits are {limited.limits}")
        print(f"limits: {limited.limits.publish_rate} msg/s, {limited.limits.max_queue_depth} queued at most")

        events = expect(list_tenant_events.sync(tenant.id, client=client), EventPage)
        kinds = [event.type_ for event in events.data]
        if kinds != ["TenantCreated.v1", "ConcurrencySet.v1", "TenantLimitsSet.v1"] or events.next_cursor is not None:
            sys.exit(f"events are {kinds}")
        print(f"events: {', '.join(kinds)}")

        created_at = events.data[0].recorded_at
        then = expect(get_tenant_state_as_of.sync(tenant.id, client=client, at=created_at), TenantState)
        if (then.version, then.workers) != (1, 2):
            sys.exit(f"as of {created_at.isoformat()} the tenant was {then}")
        print(f"as of its creation: version {then.version}, {then.workers} workers")

        export = expect(export_tenant_events.sync(tenant.id, client=client), File)
        exported = [json.loads(line) for line in export.payload.read().splitlines()]
        if [line["event_type"] for line in exported] != kinds or not all(line.get("hash") for line in exported):
            sys.exit(f"the export holds {exported}")
        print(f"export: {len(exported)} hashed lines")

        dead = expect(list_dead_letters.sync(tenant.id, client=client), DeadLetterPage)
        replayed = expect(
            replay_dead_letters.sync(tenant.id, client=client, body=ReplayRequest(ids=[uuid.uuid4()])), ReplayResult
        )
        if dead.data or replayed.replayed != 0 or len(replayed.not_found) != 1 or not replayed.complete:
            sys.exit(f"dead letters {dead.data}, replay {replayed}")
        purge = purge_dead_letters.sync_detailed(tenant.id, client=client)
        if purge.status_code != 204:
            sys.exit(f"purge answered {purge.status_code}")
        print("dead-letter queue: empty, replay found nothing, purged")

        deleted = delete_tenant.sync_detailed(tenant.id, client=client)
        gone = get_tenant.sync_detailed(tenant.id, client=client)
        if deleted.status_code != 204 or gone.status_code != 404:
            sys.exit(f"delete answered {deleted.status_code}, then get {gone.status_code}")
        print("deleted")


if __name__ == "__main__":
    main()
