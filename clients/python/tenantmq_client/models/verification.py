from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.chain_break import ChainBreak
    from ..models.stream_head import StreamHead


T = TypeVar("T", bound="Verification")


@_attrs_define
class Verification:
    """The outcome of a check of the hash chain.

    Attributes:
        next_cursor (None | str): Without `tenant_id`: pass as `cursor` to check the next streams (after a broken one
            too); `null` once
            every stream is checked.
        ok (bool): `true` when every event checked is intact.
        events (int | Unset): Events checked (when `ok`).
        first_break (ChainBreak | Unset): Where the chain breaks first, and why.
        head (StreamHead | Unset): The newest event of a stream: record it elsewhere, and a later check shows whether
            the stream still ends
            there.
        streams (int | Unset): Streams checked (when `ok`).
    """

    next_cursor: None | str
    ok: bool
    events: int | Unset = UNSET
    first_break: ChainBreak | Unset = UNSET
    head: StreamHead | Unset = UNSET
    streams: int | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        next_cursor: None | str
        next_cursor = self.next_cursor

        ok = self.ok

        events = self.events

        first_break: dict[str, Any] | Unset = UNSET
        if not isinstance(self.first_break, Unset):
            first_break = self.first_break.to_dict()

        head: dict[str, Any] | Unset = UNSET
        if not isinstance(self.head, Unset):
            head = self.head.to_dict()

        streams = self.streams

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "next_cursor": next_cursor,
                "ok": ok,
            }
        )
        if events is not UNSET:
            field_dict["events"] = events
        if first_break is not UNSET:
            field_dict["first_break"] = first_break
        if head is not UNSET:
            field_dict["head"] = head
        if streams is not UNSET:
            field_dict["streams"] = streams

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.chain_break import ChainBreak
        from ..models.stream_head import StreamHead

        d = dict(src_dict)

        def _parse_next_cursor(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        next_cursor = _parse_next_cursor(d.pop("next_cursor"))

        ok = d.pop("ok")

        events = d.pop("events", UNSET)

        _first_break = d.pop("first_break", UNSET)
        first_break: ChainBreak | Unset
        if isinstance(_first_break, Unset):
            first_break = UNSET
        else:
            first_break = ChainBreak.from_dict(_first_break)

        _head = d.pop("head", UNSET)
        head: StreamHead | Unset
        if isinstance(_head, Unset):
            head = UNSET
        else:
            head = StreamHead.from_dict(_head)

        streams = d.pop("streams", UNSET)

        verification = cls(
            next_cursor=next_cursor,
            ok=ok,
            events=events,
            first_break=first_break,
            head=head,
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
