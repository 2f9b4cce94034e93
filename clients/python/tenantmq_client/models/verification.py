from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.verification_first_break import VerificationFirstBreak
    from ..models.verification_head import VerificationHead


T = TypeVar("T", bound="Verification")


@_attrs_define
class Verification:
    """The outcome of a check of the hash chain.

    Attributes:
        ok (bool): `true` when every event checked is intact.
        events (int | Unset): Events checked (when `ok`).
        first_break (VerificationFirstBreak | Unset): The first event that does not check (when not `ok`).
        head (VerificationHead | Unset): The newest event checked (when `ok`): of one stream, its head; of several, it
            pins only its own stream.
        next_cursor (None | str | Unset): Without `tenant_id`: pass as `cursor` to check the next streams (after a
            broken one too); `null` once
            every stream is checked.
        streams (int | Unset): Streams checked (when `ok`).
    """

    ok: bool
    events: int | Unset = UNSET
    first_break: VerificationFirstBreak | Unset = UNSET
    head: VerificationHead | Unset = UNSET
    next_cursor: None | str | Unset = UNSET
    streams: int | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        ok = self.ok

        events = self.events

        first_break: dict[str, Any] | Unset = UNSET
        if not isinstance(self.first_break, Unset):
            first_break = self.first_break.to_dict()

        head: dict[str, Any] | Unset = UNSET
        if not isinstance(self.head, Unset):
            head = self.head.to_dict()

        next_cursor: None | str | Unset
        if isinstance(self.next_cursor, Unset):
            next_cursor = UNSET
        else:
            next_cursor = self.next_cursor

        streams = self.streams

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "ok": ok,
            }
        )
        if events is not UNSET:
            field_dict["events"] = events
        if first_break is not UNSET:
            field_dict["first_break"] = first_break
        if head is not UNSET:
            field_dict["head"] = head
        if next_cursor is not UNSET:
            field_dict["next_cursor"] = next_cursor
        if streams is not UNSET:
            field_dict["streams"] = streams

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.verification_first_break import VerificationFirstBreak
        from ..models.verification_head import VerificationHead

        d = dict(src_dict)
        ok = d.pop("ok")

        events = d.pop("events", UNSET)

        _first_break = d.pop("first_break", UNSET)
        first_break: VerificationFirstBreak | Unset
        if isinstance(_first_break, Unset):
            first_break = UNSET
        else:
            first_break = VerificationFirstBreak.from_dict(_first_break)

        _head = d.pop("head", UNSET)
        head: VerificationHead | Unset
        if isinstance(_head, Unset):
            head = UNSET
        else:
            head = VerificationHead.from_dict(_head)

        def _parse_next_cursor(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        next_cursor = _parse_next_cursor(d.pop("next_cursor", UNSET))

        streams = d.pop("streams", UNSET)

        verification = cls(
            ok=ok,
            events=events,
            first_break=first_break,
            head=head,
            next_cursor=next_cursor,
            streams=streams,
        )

        verification.additional_properties = d
        return verification

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
