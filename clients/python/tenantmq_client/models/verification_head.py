from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

from attrs import define as _attrs_define
from attrs import field as _attrs_field

T = TypeVar("T", bound="VerificationHead")


@_attrs_define
class VerificationHead:
    """The newest event checked (when `ok`): of one stream, its head; of several, it pins only its own stream.

    Attributes:
        hash_ (str): SHA-256 of the event's canonical encoding, 64 lowercase hex digits.
        position (int): Global position in the log.
        stream_id (UUID): The stream, which is the tenant's id.
        version (int):
    """

    hash_: str
    position: int
    stream_id: UUID
    version: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        hash_ = self.hash_

        position = self.position

        stream_id = str(self.stream_id)

        version = self.version

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "hash": hash_,
                "position": position,
                "stream_id": stream_id,
                "version": version,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        hash_ = d.pop("hash")

        position = d.pop("position")

        stream_id = UUID(d.pop("stream_id"))

        version = d.pop("version")

        verification_head = cls(
            hash_=hash_,
            position=position,
            stream_id=stream_id,
            version=version,
        )

        verification_head.additional_properties = d
        return verification_head

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
