from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

T = TypeVar("T", bound="DeadLetterMessage")


@_attrs_define
class DeadLetterMessage:
    """A message that failed for good.

    Attributes:
        attempts (int | None): How many times it failed.
        body (None | str): The body as text (invalid UTF-8 replaced), when it is not JSON or is `truncated`.
        dead_lettered_at (datetime.datetime | None):
        first_failed_at (datetime.datetime | None):
        id (None | str): The AMQP `message_id` (a UUID for everything this service dead-lettered); select it for a
            replay.
        payload (Any): The body, when it is JSON, as it was published (large numbers keep every digit).
        reason (None | str): Why it failed last, e.g. `body is not JSON`.
        size (int): The body's size in bytes.
        truncated (bool): Whether `body` shows only the first `max_payload_bytes` of a larger body (a replay moves the
            whole
            message).
    """

    attempts: int | None
    body: None | str
    dead_lettered_at: datetime.datetime | None
    first_failed_at: datetime.datetime | None
    id: None | str
    payload: Any
    reason: None | str
    size: int
    truncated: bool
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        attempts: int | None
        attempts = self.attempts

        body: None | str
        body = self.body

        dead_lettered_at: None | str
        if isinstance(self.dead_lettered_at, datetime.datetime):
            dead_lettered_at = self.dead_lettered_at.isoformat()
        else:
            dead_lettered_at = self.dead_lettered_at

        first_failed_at: None | str
        if isinstance(self.first_failed_at, datetime.datetime):
            first_failed_at = self.first_failed_at.isoformat()
        else:
            first_failed_at = self.first_failed_at

        id: None | str
        id = self.id

        payload = self.payload

        reason: None | str
        reason = self.reason

        size = self.size

        truncated = self.truncated

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "attempts": attempts,
                "body": body,
                "dead_lettered_at": dead_lettered_at,
                "first_failed_at": first_failed_at,
                "id": id,
                "payload": payload,
                "reason": reason,
                "size": size,
                "truncated": truncated,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_attempts(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        attempts = _parse_attempts(d.pop("attempts"))

        def _parse_body(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        body = _parse_body(d.pop("body"))

        def _parse_dead_lettered_at(data: object) -> datetime.datetime | None:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                dead_lettered_at_type_0 = isoparse(data)

                return dead_lettered_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None, data)

        dead_lettered_at = _parse_dead_lettered_at(d.pop("dead_lettered_at"))

        def _parse_first_failed_at(data: object) -> datetime.datetime | None:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                first_failed_at_type_0 = isoparse(data)

                return first_failed_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None, data)

        first_failed_at = _parse_first_failed_at(d.pop("first_failed_at"))

        def _parse_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        id = _parse_id(d.pop("id"))

        payload = d.pop("payload")

        def _parse_reason(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        reason = _parse_reason(d.pop("reason"))

        size = d.pop("size")

        truncated = d.pop("truncated")

        dead_letter_message = cls(
            attempts=attempts,
            body=body,
            dead_lettered_at=dead_lettered_at,
            first_failed_at=first_failed_at,
            id=id,
            payload=payload,
            reason=reason,
            size=size,
            truncated=truncated,
        )

        dead_letter_message.additional_properties = d
        return dead_letter_message

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
