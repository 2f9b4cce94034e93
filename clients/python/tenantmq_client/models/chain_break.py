from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

from attrs import define as _attrs_define
from attrs import field as _attrs_field

T = TypeVar("T", bound="ChainBreak")


@_attrs_define
class ChainBreak:
    """Where the chain breaks first, and why.

    Attributes:
        detail (str): The reason with the hashes or versions involved.
        position (int): Global position of the first event that does not check.
        reason (str): `hash_mismatch` (the event was changed), `broken_link` (its `prev_hash` is not the previous
            event's
            hash), `version_gap` (an event before it is missing) or `unreadable` (the event was changed so that it
            cannot be encoded to be hashed: a hash that is not 32 bytes, JSON nested too deep).
        stream_id (UUID):
        version (int):
    """

    detail: str
    position: int
    reason: str
    stream_id: UUID
    version: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        detail = self.detail

        position = self.position

        reason = self.reason

        stream_id = str(self.stream_id)

        version = self.version

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "detail": detail,
                "position": position,
                "reason": reason,
                "stream_id": stream_id,
                "version": version,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        detail = d.pop("detail")

        position = d.pop("position")

        reason = d.pop("reason")

        stream_id = UUID(d.pop("stream_id"))

        version = d.pop("version")

        chain_break = cls(
            detail=detail,
            position=position,
            reason=reason,
            stream_id=stream_id,
            version=version,
        )

        chain_break.additional_properties = d
        return chain_break

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
