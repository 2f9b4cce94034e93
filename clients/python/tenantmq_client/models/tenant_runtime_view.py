from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

if TYPE_CHECKING:
    from ..models.consumer_failure_view import ConsumerFailureView


T = TypeVar("T", bound="TenantRuntimeView")


@_attrs_define
class TenantRuntimeView:
    """What is running for a tenant on this instance.

    Attributes:
        busy_workers (int): Workers holding a batch right now: writing it, waiting for a write turn, or pausing between
            tries
            while the database cannot take it.
        consumer_failure (ConsumerFailureView | None): While `consumer_state` is `restarting`: why the consumer failed,
            and when it starts again.
        consumer_state (str): `starting`, `running`, `stopping`, `restarting` (this instance's consumer failed and
            starts again after
            a pause: see `consumer_failure`), or `stopped` (no consumer on this instance right now).
        consumer_tag (None | str): This instance's consumer tag (instance, tenant, generation).
        dlq_depth (int | None): Messages in the tenant's dead-letter queue.
        queue_consumers (int | None): Consumers on the tenant's queue, across all instances.
        queue_depth (int | None): Messages ready in the tenant's queue. Null, as are the three counts below, when the
            broker cannot be
            asked or the queue does not exist (deleted from outside, and not declared again yet).
        retry_depth (int | None): Messages waiting in the tenant's retry queue for their next attempt.
        running_workers (int): Workers in the pool now (follows `workers` after a change).
    """

    busy_workers: int
    consumer_failure: ConsumerFailureView | None
    consumer_state: str
    consumer_tag: None | str
    dlq_depth: int | None
    queue_consumers: int | None
    queue_depth: int | None
    retry_depth: int | None
    running_workers: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.consumer_failure_view import ConsumerFailureView

        busy_workers = self.busy_workers

        consumer_failure: dict[str, Any] | None
        if isinstance(self.consumer_failure, ConsumerFailureView):
            consumer_failure = self.consumer_failure.to_dict()
        else:
            consumer_failure = self.consumer_failure

        consumer_state = self.consumer_state

        consumer_tag: None | str
        consumer_tag = self.consumer_tag

        dlq_depth: int | None
        dlq_depth = self.dlq_depth

        queue_consumers: int | None
        queue_consumers = self.queue_consumers

        queue_depth: int | None
        queue_depth = self.queue_depth

        retry_depth: int | None
        retry_depth = self.retry_depth

        running_workers = self.running_workers

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "busy_workers": busy_workers,
                "consumer_failure": consumer_failure,
                "consumer_state": consumer_state,
                "consumer_tag": consumer_tag,
                "dlq_depth": dlq_depth,
                "queue_consumers": queue_consumers,
                "queue_depth": queue_depth,
                "retry_depth": retry_depth,
                "running_workers": running_workers,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.consumer_failure_view import ConsumerFailureView

        d = dict(src_dict)
        busy_workers = d.pop("busy_workers")

        def _parse_consumer_failure(data: object) -> ConsumerFailureView | None:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                consumer_failure_type_1 = ConsumerFailureView.from_dict(data)

                return consumer_failure_type_1
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ConsumerFailureView | None, data)

        consumer_failure = _parse_consumer_failure(d.pop("consumer_failure"))

        consumer_state = d.pop("consumer_state")

        def _parse_consumer_tag(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        consumer_tag = _parse_consumer_tag(d.pop("consumer_tag"))

        def _parse_dlq_depth(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        dlq_depth = _parse_dlq_depth(d.pop("dlq_depth"))

        def _parse_queue_consumers(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        queue_consumers = _parse_queue_consumers(d.pop("queue_consumers"))

        def _parse_queue_depth(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        queue_depth = _parse_queue_depth(d.pop("queue_depth"))

        def _parse_retry_depth(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        retry_depth = _parse_retry_depth(d.pop("retry_depth"))

        running_workers = d.pop("running_workers")

        tenant_runtime_view = cls(
            busy_workers=busy_workers,
            consumer_failure=consumer_failure,
            consumer_state=consumer_state,
            consumer_tag=consumer_tag,
            dlq_depth=dlq_depth,
            queue_consumers=queue_consumers,
            queue_depth=queue_depth,
            retry_depth=retry_depth,
            running_workers=running_workers,
        )

        tenant_runtime_view.additional_properties = d
        return tenant_runtime_view

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
