from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

T = TypeVar("T", bound="Event")


@_attrs_define
class Event:
    """One event of a tenant's stream.

    Attributes:
        data (Any):
        hash_ (str): SHA-256 of the event's canonical encoding, 64 lowercase hex digits (see docs/audit.md).
        metadata (Any): Actor, request id and correlation id of the command that caused it.
        position (int): Global position in the log.
        prev_hash (str): The `hash` of the stream's previous event; 64 zeros for version 1.
        recorded_at (datetime.datetime):
        type_ (str): Stable, versioned type name, e.g. `TenantCreated.v1`.
        version (int): Position within the tenant's stream, from 1.
    """

    data: Any
    hash_: str
    metadata: Any
    position: int
    prev_hash: str
    recorded_at: datetime.datetime
    type_: str
    version: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = self.data

        hash_ = self.hash_

        metadata = self.metadata

        position = self.position

        prev_hash = self.prev_hash

        recorded_at = self.recorded_at.isoformat()

        type_ = self.type_

        version = self.version

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "data": data,
                "hash": hash_,
                "metadata": metadata,
                "position": position,
                "prev_hash": prev_hash,
                "recorded_at": recorded_at,
                "type": type_,
                "version": version,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        data = d.pop("data")

        hash_ = d.pop("hash")

        metadata = d.pop("metadata")

        position = d.pop("position")

        prev_hash = d.pop("prev_hash")

        recorded_at = isoparse(d.pop("recorded_at"))

        type_ = d.pop("type")

        version = d.pop("version")

        event = cls(
            data=data,
            hash_=hash_,
            metadata=metadata,
            position=position,
            prev_hash=prev_hash,
            recorded_at=recorded_at,
            type_=type_,
            version=version,
        )

        event.additional_properties = d
        return event

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
