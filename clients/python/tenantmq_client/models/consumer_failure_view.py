from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

T = TypeVar("T", bound="ConsumerFailureView")


@_attrs_define
class ConsumerFailureView:
    """Why a tenant's consumer is not running on this instance, while it waits to start again.

    Attributes:
        failed_at (datetime.datetime):
        failures_in_a_row (int): Failures in a row; each waits twice as long as the one before, up to 10 s. A run of a
            minute starts
            the count again.
        reason (str): `access_refused` (the broker refused the subscription: another client consumes the queue
            exclusively,
            or the broker user may not read it), `queue_arguments_differ` (the queue exists with other arguments
            than the service declares: someone else declared it; delete it, or declare it as the service does),
            `subscription_cancelled` (the broker ended the subscription: the queue was deleted, or its leader
            moved), `connection_lost`, `handover_timed_out` (a resize could not hand deliveries over in time),
            `panicked` or `broker_error` (the service's log has the details). More may be added.
        restart_at (datetime.datetime): The earliest the consumer starts again; it waits longer while this instance has
            no broker
            connection.
    """

    failed_at: datetime.datetime
    failures_in_a_row: int
    reason: str
    restart_at: datetime.datetime
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        failed_at = self.failed_at.isoformat()

        failures_in_a_row = self.failures_in_a_row

        reason = self.reason

        restart_at = self.restart_at.isoformat()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "failed_at": failed_at,
                "failures_in_a_row": failures_in_a_row,
                "reason": reason,
                "restart_at": restart_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        failed_at = isoparse(d.pop("failed_at"))

        failures_in_a_row = d.pop("failures_in_a_row")

        reason = d.pop("reason")

        restart_at = isoparse(d.pop("restart_at"))

        consumer_failure_view = cls(
            failed_at=failed_at,
            failures_in_a_row=failures_in_a_row,
            reason=reason,
            restart_at=restart_at,
        )

        consumer_failure_view.additional_properties = d
        return consumer_failure_view

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
