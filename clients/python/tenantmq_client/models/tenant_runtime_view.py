from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.tenant_runtime_view_consumer_failure_type_1 import (
        TenantRuntimeViewConsumerFailureType1,
    )


T = TypeVar("T", bound="TenantRuntimeView")


@_attrs_define
class TenantRuntimeView:
    """What is running for a tenant on this instance.

    Attributes:
        busy_workers (int): Workers holding a batch right now: writing it, waiting for a write turn, or pausing between
            tries
            while the database cannot take it.
        consumer_state (str): `starting`, `running`, `stopping`, `restarting` (this instance's consumer failed and
            starts again after
            a pause: see `consumer_failure`), or `stopped` (no consumer on this instance right now).
        running_workers (int): Workers in the pool now (follows `workers` after a change).
        consumer_failure (None | TenantRuntimeViewConsumerFailureType1 | Unset): While `consumer_state` is `restarting`:
            why the consumer failed, and when it starts again.
        consumer_tag (None | str | Unset): This instance's consumer tag (instance, tenant, generation).
        dlq_depth (int | None | Unset): Messages in the tenant's dead-letter queue.
        queue_consumers (int | None | Unset): Consumers on the tenant's queue, across all instances.
        queue_depth (int | None | Unset): Messages ready in the tenant's queue. Null, as are the three counts below,
            when the broker cannot be
            asked or the queue does not exist (deleted from outside, and not declared again yet).
        retry_depth (int | None | Unset): Messages waiting in the tenant's retry queue for their next attempt.
    """

    busy_workers: int
    consumer_state: str
    running_workers: int
    consumer_failure: None | TenantRuntimeViewConsumerFailureType1 | Unset = UNSET
    consumer_tag: None | str | Unset = UNSET
    dlq_depth: int | None | Unset = UNSET
    queue_consumers: int | None | Unset = UNSET
    queue_depth: int | None | Unset = UNSET
    retry_depth: int | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.tenant_runtime_view_consumer_failure_type_1 import (
            TenantRuntimeViewConsumerFailureType1,
        )

        busy_workers = self.busy_workers

        consumer_state = self.consumer_state

        running_workers = self.running_workers

        consumer_failure: dict[str, Any] | None | Unset
        if isinstance(self.consumer_failure, Unset):
            consumer_failure = UNSET
        elif isinstance(self.consumer_failure, TenantRuntimeViewConsumerFailureType1):
            consumer_failure = self.consumer_failure.to_dict()
        else:
            consumer_failure = self.consumer_failure

        consumer_tag: None | str | Unset
        if isinstance(self.consumer_tag, Unset):
            consumer_tag = UNSET
        else:
            consumer_tag = self.consumer_tag

        dlq_depth: int | None | Unset
        if isinstance(self.dlq_depth, Unset):
            dlq_depth = UNSET
        else:
            dlq_depth = self.dlq_depth

        queue_consumers: int | None | Unset
        if isinstance(self.queue_consumers, Unset):
            queue_consumers = UNSET
        else:
            queue_consumers = self.queue_consumers

        queue_depth: int | None | Unset
        if isinstance(self.queue_depth, Unset):
            queue_depth = UNSET
        else:
            queue_depth = self.queue_depth

        retry_depth: int | None | Unset
        if isinstance(self.retry_depth, Unset):
            retry_depth = UNSET
        else:
            retry_depth = self.retry_depth

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "busy_workers": busy_workers,
                "consumer_state": consumer_state,
                "running_workers": running_workers,
            }
        )
        if consumer_failure is not UNSET:
            field_dict["consumer_failure"] = consumer_failure
        if consumer_tag is not UNSET:
            field_dict["consumer_tag"] = consumer_tag
        if dlq_depth is not UNSET:
            field_dict["dlq_depth"] = dlq_depth
        if queue_consumers is not UNSET:
            field_dict["queue_consumers"] = queue_consumers
        if queue_depth is not UNSET:
            field_dict["queue_depth"] = queue_depth
        if retry_depth is not UNSET:
            field_dict["retry_depth"] = retry_depth

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.tenant_runtime_view_consumer_failure_type_1 import (
            TenantRuntimeViewConsumerFailureType1,
        )

        d = dict(src_dict)
        busy_workers = d.pop("busy_workers")

        consumer_state = d.pop("consumer_state")

        running_workers = d.pop("running_workers")

        def _parse_consumer_failure(
            data: object,
        ) -> None | TenantRuntimeViewConsumerFailureType1 | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                consumer_failure_type_1 = (
                    TenantRuntimeViewConsumerFailureType1.from_dict(data)
                )

                return consumer_failure_type_1
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | TenantRuntimeViewConsumerFailureType1 | Unset, data)

        consumer_failure = _parse_consumer_failure(d.pop("consumer_failure", UNSET))

        def _parse_consumer_tag(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        consumer_tag = _parse_consumer_tag(d.pop("consumer_tag", UNSET))

        def _parse_dlq_depth(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        dlq_depth = _parse_dlq_depth(d.pop("dlq_depth", UNSET))

        def _parse_queue_consumers(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        queue_consumers = _parse_queue_consumers(d.pop("queue_consumers", UNSET))

        def _parse_queue_depth(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        queue_depth = _parse_queue_depth(d.pop("queue_depth", UNSET))

        def _parse_retry_depth(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        retry_depth = _parse_retry_depth(d.pop("retry_depth", UNSET))

        tenant_runtime_view = cls(
            busy_workers=busy_workers,
            consumer_state=consumer_state,
            running_workers=running_workers,
            consumer_failure=consumer_failure,
            consumer_tag=consumer_tag,
            dlq_depth=dlq_depth,
            queue_consumers=queue_consumers,
            queue_depth=queue_depth,
            retry_depth=retry_depth,
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
