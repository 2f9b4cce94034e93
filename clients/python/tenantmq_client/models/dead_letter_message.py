from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

from ..types import UNSET, Unset

T = TypeVar("T", bound="DeadLetterMessage")


@_attrs_define
class DeadLetterMessage:
    """A message that failed for good.

    Attributes:
        size (int): The body's size in bytes.
        truncated (bool): Whether `body` shows only the first `max_payload_bytes` of a larger body (a replay moves the
            whole
            message).
        attempts (int | None | Unset): How many times it failed.
        body (None | str | Unset): The body as text (invalid UTF-8 replaced), when it is not JSON or is `truncated`.
        dead_lettered_at (datetime.datetime | None | Unset):
        first_failed_at (datetime.datetime | None | Unset):
        id (None | str | Unset): The AMQP `message_id` (a UUID for everything this service dead-lettered); select it for
            a replay.
        payload (Any | Unset): The body, when it is JSON, as it was published (large numbers keep every digit).
        reason (None | str | Unset): Why it failed last, e.g. `body is not JSON`.
    """

    size: int
    truncated: bool
    attempts: int | None | Unset = UNSET
    body: None | str | Unset = UNSET
    dead_lettered_at: datetime.datetime | None | Unset = UNSET
    first_failed_at: datetime.datetime | None | Unset = UNSET
    id: None | str | Unset = UNSET
    payload: Any | Unset = UNSET
    reason: None | str | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        size = self.size

        truncated = self.truncated

        attempts: int | None | Unset
        if isinstance(self.attempts, Unset):
            attempts = UNSET
        else:
            attempts = self.attempts

        body: None | str | Unset
        if isinstance(self.body, Unset):
            body = UNSET
        else:
            body = self.body

        dead_lettered_at: None | str | Unset
        if isinstance(self.dead_lettered_at, Unset):
            dead_lettered_at = UNSET
        elif isinstance(self.dead_lettered_at, datetime.datetime):
            dead_lettered_at = self.dead_lettered_at.isoformat()
        else:
            dead_lettered_at = self.dead_lettered_at

        first_failed_at: None | str | Unset
        if isinstance(self.first_failed_at, Unset):
            first_failed_at = UNSET
        elif isinstance(self.first_failed_at, datetime.datetime):
            first_failed_at = self.first_failed_at.isoformat()
        else:
            first_failed_at = self.first_failed_at

        id: None | str | Unset
        if isinstance(self.id, Unset):
            id = UNSET
        else:
            id = self.id

        payload = self.payload

        reason: None | str | Unset
        if isinstance(self.reason, Unset):
            reason = UNSET
        else:
            reason = self.reason

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "size": size,
                "truncated": truncated,
            }
        )
        if attempts is not UNSET:
            field_dict["attempts"] = attempts
        if body is not UNSET:
            field_dict["body"] = body
        if dead_lettered_at is not UNSET:
            field_dict["dead_lettered_at"] = dead_lettered_at
        if first_failed_at is not UNSET:
            field_dict["first_failed_at"] = first_failed_at
        if id is not UNSET:
            field_dict["id"] = id
        if payload is not UNSET:
            field_dict["payload"] = payload
        if reason is not UNSET:
            field_dict["reason"] = reason

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        size = d.pop("size")

        truncated = d.pop("truncated")

        def _parse_attempts(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        attempts = _parse_attempts(d.pop("attempts", UNSET))

        def _parse_body(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        body = _parse_body(d.pop("body", UNSET))

        def _parse_dead_lettered_at(data: object) -> datetime.datetime | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                dead_lettered_at_type_0 = isoparse(data)

                return dead_lettered_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None | Unset, data)

        dead_lettered_at = _parse_dead_lettered_at(d.pop("dead_lettered_at", UNSET))

        def _parse_first_failed_at(data: object) -> datetime.datetime | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                first_failed_at_type_0 = isoparse(data)

                return first_failed_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None | Unset, data)

        first_failed_at = _parse_first_failed_at(d.pop("first_failed_at", UNSET))

        def _parse_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        id = _parse_id(d.pop("id", UNSET))

        payload = d.pop("payload", UNSET)

        def _parse_reason(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        reason = _parse_reason(d.pop("reason", UNSET))

        dead_letter_message = cls(
            size=size,
            truncated=truncated,
            attempts=attempts,
            body=body,
            dead_lettered_at=dead_lettered_at,
            first_failed_at=first_failed_at,
            id=id,
            payload=payload,
            reason=reason,
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
